"""Every entry point's configuration: each composes over its registered schema with every option of every group and
builds its typed spec; configuration errors exit 2 with one line (and a "did you mean"); output.uri edge values;
no credential given on the command line in any file a job writes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from jobs.edge import CONF_DIR
from pipeline.dataset.export import export_masklets
from pipeline.dataset.manifest_maker import PromptSpec
from pipeline.dataset.specs import EvaluateSpec, ExportSpec, MakeManifestSpec, RenderSpec, ReportSpec
from pipeline.io.masklets import Masklets, masklets_to_bytes
from pipeline.io.rle import encode_rles
from pipeline.plan.manifest import DEFAULT_PROTOCOLS
from pipeline.specs import GENERATOR_KEYS, SESSION_KEYS, AutoSpec, ClusterSpec, JobSpec, OutputSpec, SpecError
from sam2core.automatic import GeneratorOptions
from sam2core.config import CONFIGS, MODEL_NAMES
from tests.helpers import make_video, synthetic_frames
from tests.jobs.jobdata import REPO
from tests.pipeline.driver.propagate_support import prompts_for, write_manifest

JOBS = ("propagate", "render", "report", "export", "evaluate", "make_manifest", "segment_images")
SECRET = "SEKRIT123"


def _spec(job: str, overrides: list[str]) -> object:
    """The spec ``python -m jobs.<job> overrides…`` would run with, composed through Hydra's compose API."""
    entry = importlib.import_module(f"jobs.{job}").JOB
    entry.register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return entry.spec(compose(entry.config, overrides=overrides))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# the values a group option leaves for the command line
REQUIRED = {"data=s3": ["data.manifest=s3://b/m.parquet"], "output=s3": ["output.uri=s3://b/run"]}


def test_every_entry_point_has_a_job_a_config_and_the_shared_hydra_settings() -> None:
    configs = {p.stem for p in CONF_DIR.glob("*.yaml")}
    for job in JOBS:
        entry = importlib.import_module(f"jobs.{job}").JOB
        assert entry.name == job and entry.config in configs
        entry.register()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            hydra = OmegaConf.to_container(compose(entry.config, return_hydra_config=True).hydra, resolve=False)
        assert hydra["callbacks"]["redact_secrets"]["_target_"] == "jobs.redaction.RedactSecrets"
        assert hydra["run"]["dir"].startswith("outputs/_hydra/${hydra.job.name}/")
    assert _options("model") == sorted(MODEL_NAMES)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_each_model_option_builds_its_spec(model: str) -> None:
    spec = _spec("propagate", [f"model={model}"])
    assert isinstance(spec, JobSpec)
    assert (spec.model.name, spec.model.checkpoint, spec.model.image_size) == (
        model, CONFIGS[model].checkpoint_url, CONFIGS[model].image_size)
    assert spec.output.uri == f"outputs/sample/{model}"


@pytest.mark.parametrize("choice", [f"{group}={option}" for group in ("data", "output", "cluster", "prompts")
                                    for option in _options(group)])
def test_each_group_option_composes_and_builds_the_spec(choice: str) -> None:
    spec = _spec("propagate", [choice, *REQUIRED.get(choice, [])])
    group, _, option = choice.partition("=")
    if group == "data":
        assert spec.data.name == option
    if group == "prompts":
        assert spec.data.prompts == option and (spec.auto is None) == (option == "manifest")


def test_defaults_are_the_specs() -> None:
    spec = _spec("propagate", [])
    assert spec.cluster == ClusterSpec()  # conf/cluster/local.yaml chooses, the spec holds every default
    assert spec.output == OutputSpec(uri="outputs/sample/sam2.1_hiera_tiny")
    assert spec.data.protocols == DEFAULT_PROTOCOLS and spec.data.decoder == "pyav"
    assert list(spec.session) == list(SESSION_KEYS) and spec.auto is None
    assert (spec.num_shards, spec.shard_id, spec.log_every_s) == (1, 0, 10.0)
    assert spec.config["output"]["retry_s"] == 120.0 and "retry_s: 120.0" in spec.config_yaml


@pytest.mark.parametrize("overrides,check", [
    (["data=s3", "data.manifest=s3://b/m.parquet"], lambda s: (s.data.name, s.data.manifest, s.data.root) ==
     ("s3", "s3://b/m.parquet", "")),
    (["data=sample"], lambda s: s.data.manifest == "data/sample/manifest.parquet"),
    (["output=s3", "output.uri=s3://b/run"], lambda s: s.output.uri == "s3://b/run"),
    (["cluster=ray"], lambda s: (s.cluster.address, s.cluster.gpus_per_worker) == ("auto", 1.0)),
    (["prompts=auto"], lambda s: (s.data.prompts, s.auto) == ("auto", AutoSpec())),
    (["prompts=manifest+auto", "auto.generator.points_per_side=8"],
     lambda s: s.data.prompts == "manifest+auto" and s.auto.generator["points_per_side"] == 8),
    (["+session.keep_history=true", "sharding.num_shards=4", "sharding.shard_id=3"],
     lambda s: s.session["keep_history"] is True and (s.num_shards, s.shard_id) == (4, 3)),
    (["output.storage_options={secret: x}"], lambda s: s.output.storage_options == {"secret": "x"}
     and s.config["output"]["storage_options"] == {"secret": "<redacted>"}),
])
def test_group_options_and_overrides_reach_the_spec(overrides: list[str], check) -> None:
    assert check(_spec("propagate", overrides))


def test_auto_generator_defaults_are_the_official_ones() -> None:
    official = asdict(GeneratorOptions())
    assert AutoSpec().generator == {k: official[k] for k in GENERATOR_KEYS}


@pytest.mark.parametrize("job,overrides,kind", [
    ("render", ["prefix=p", "sheet.frames=[0,5]", "videos=[a]"], RenderSpec),
    ("report", ["prefix=p"], ReportSpec),
    ("export", ["prefix=p", "format=davis"], ExportSpec),
    ("evaluate", ["pred=p", "gt=g", "cluster.num_cpus=1"], EvaluateSpec),
    ("make_manifest", ["annotations=a", "prompts.kind=points", "prompts.num_points=3"], MakeManifestSpec),
])
def test_each_tool_builds_its_spec(job: str, overrides: list[str], kind: type) -> None:
    spec = _spec(job, overrides)
    assert isinstance(spec, kind)
    if job == "report":
        assert spec.sheet.width == 240 and spec.sheet.frames == 8
    if job == "make_manifest":
        assert spec.prompts == PromptSpec(kind="points", num_points=3) and spec.kinds == ["manual"]


@pytest.mark.parametrize("job,overrides,message", [
    ("propagate", ["model.image_size=250"], "model.image_size=250"),
    ("propagate", ["output=s3"], "output.uri: missing value"),
    ("render", [], "prefix: missing value"),
    ("render", ["prefix=p", "decoder=ffmpeg"], "decoder=ffmpeg"),
    ("export", ["prefix=p", "format=coco"], "format: must be one of"),
    ("make_manifest", [], "give exactly one of annotations=URI"),
    ("make_manifest", ["shard=s", "prompts.kind=scribble"], "prompts.kind=scribble"),
    ("evaluate", ["pred=p", "gt=g", "annotation_step=0"], "annotation_step=0"),
])
def test_bad_values_are_refused_by_the_spec(job: str, overrides: list[str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(job, overrides)


def _run(job: str, *args: str, tmp: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m jobs.<job> args…`` from the repository root, Hydra's files under ``tmp/hydra/<job>``."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", f"jobs.{job}", *args, f"hydra.run.dir={tmp / 'hydra' / job}"],
                          cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


def _refusal(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused job printed (exit 2, no traceback)."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.mark.parametrize("job,override,expected", [
    ("propagate", "modle=sam2.1_hiera_tiny", "modle: no such key (did you mean model?)"),
    ("propagate", "model.nmae=x", "model.nmae: no such key (did you mean model.name?)"),
    ("propagate", "model=sam2.1_hiera_tinny", "model=sam2.1_hiera_tinny: no such option in conf/model/ (did you "
                                              "mean model=sam2.1_hiera_tiny?)"),
    ("propagate", "model=nothing", "model=nothing: no such option in conf/model/; options: sam2.1_hiera_base_plus"),
    ("propagate", "cluster.max_atempts=1", "cluster.max_atempts: no such key (did you mean cluster.max_attempts?)"),
    ("propagate", "prompts=autos", "prompts=autos: no such option in conf/prompts/ (did you mean prompts=auto?)"),
    ("propagate", "model.image_size=abc", "model.image_size=abc: Value 'abc' of type 'str' could not be "
                                          "converted to Integer"),
    ("propagate", "output.uri=~/x", "output.uri=~/x: cannot parse this override (quote a value with special "
                                    "characters: key='...')"),
    ("propagate", "+modle=x", "modle: no such key (did you mean model?)"),
    ("propagate", "auto.every=2", "auto.every: auto is null here: give it whole (auto={key: value}) or choose the "
                                  "group option that fills it"),
    ("propagate", "data.storage_options.key=AKIAFAKE", "data.storage_options.key: data.storage_options is null here"),
    ("render", "prefxi=p", "prefxi: no such key (did you mean prefix?)"),
    ("report", "sheet.widht=3", "sheet.widht: no such key (did you mean sheet.width?)"),
    ("export", "formt=davis", "formt: no such key (did you mean format?)"),
    ("evaluate", "cluster.num_cpu=1", "cluster.num_cpu: no such key (did you mean cluster.num_cpus?)"),
    ("make_manifest", "prompts.knid=box", "prompts.knid: no such key (did you mean prompts.kind?)"),
])
def test_hydra_errors_exit_2_with_one_line(tmp_path: Path, job: str, override: str, expected: str) -> None:
    line = _refusal(_run(job, override, tmp=tmp_path))
    assert line.startswith(f"jobs.{job}: {expected}") or line.endswith(f"[jobs.{job}][ERROR] - {expected}")


@pytest.mark.parametrize("override,expected", [
    ("output.uri=", "output.uri is empty"),
    ("output.uri=null", "output.uri=null: a value is required (null is not allowed here)"),
])
def test_empty_or_null_output_uri_is_refused(tmp_path: Path, override: str, expected: str) -> None:
    assert expected in _refusal(_run("propagate", "model.checkpoint=random", override, tmp=tmp_path))
    assert not (REPO / "_state").exists()


def test_cfg_job_prints_the_config_resolved(tmp_path: Path) -> None:
    proc = _run("propagate", "--cfg", "job", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "uri: outputs/sample/sam2.1_hiera_tiny" in proc.stdout and "${" not in proc.stdout


def _clip(tmp_path: Path) -> tuple[Path, Path]:
    """A one-video prefix (masklets/clip.json) and the video's folder."""
    t, h, w = 4, 32, 48
    data = tmp_path / "data"
    make_video(data / "clip.mp4", synthetic_frames(t, h, w), fps=24)
    masks = np.zeros((t, 1, h, w), dtype=bool)
    masks[:, :, 4:20, 6:30] = True
    m = Masklets("clip", t, h, w, [1], list(range(t)), [encode_rles(masks[i]) for i in range(t)],
                 [[1.0]] * t, [0], {"model": "sam2.1_hiera_tiny", "checkpoint": "random"})
    prefix = tmp_path / "run"
    (prefix / "masklets").mkdir(parents=True)
    (prefix / "masklets" / "clip.json").write_bytes(masklets_to_bytes(m, "sav_json"))
    export_masklets(m, str(tmp_path / "gt"), "sav_png")
    return prefix, data


@pytest.mark.slow  # ~12 s; tests/pipeline/driver/test_edges.py checks the rule without a job
def test_tilde_output_uri_is_the_home_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    frames = synthetic_frames(3, 64, 96)
    make_video(tmp_path / "v.mp4", frames)
    manifest = write_manifest(prompts_for("v", "v.mp4", frames, "box"), str(tmp_path / "m.parquet"))
    proc = _run("propagate", "model.checkpoint=random", "model.image_size=128", "model.device=cpu",
                f"data.manifest={manifest}", f"data.root={tmp_path}", "data.decoder=pyav", "output.uri='~/x'",
                "cluster.num_workers=1", tmp=tmp_path, env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (home / "x" / "masklets" / "v.json").is_file()
    assert not (REPO / "~").exists()


def test_no_job_writes_a_command_line_credential(tmp_path: Path, sav_dir: Path) -> None:
    prefix, data = _clip(tmp_path)
    options = f"{{key: AKIAFAKE, secret: {SECRET}}}"
    # the jobs with propagate's groups are refused at the manifest after Hydra wrote its files: what they wrote is
    # checked all the same
    refused = ["model.checkpoint=random", f"data.manifest={tmp_path / 'none.parquet'}",
               f"output.uri={tmp_path / 'out'}", f"output.storage_options={options}",
               f"+data.storage_options.secret={SECRET}"]
    runs = {
        "propagate": refused,
        "segment_images": refused,
        "render": [f"prefix={prefix}", f"data_root={data}", "mp4=false", "sheet.width=32"],
        "report": [f"prefix={prefix}", f"data_root={data}", "sheet.width=32"],
        "export": [f"prefix={prefix}", "format=sav_png"],
        "evaluate": [f"pred={prefix}", f"gt={tmp_path / 'gt'}", "cluster.num_cpus=1", "strict=false"],
        "make_manifest": [f"annotations={sav_dir}", f"manifest={tmp_path / 'made.parquet'}"],
    }
    assert set(runs) == set(JOBS)
    for job, args in runs.items():
        extra = [] if args is refused else [f"storage_options={options}"]
        proc = _run(job, *args, *extra, tmp=tmp_path)
        assert proc.returncode == (2 if args is refused else 0), proc.stdout + proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        assert (tmp_path / "hydra" / job / ".hydra" / "overrides.yaml").is_file()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaked = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert not leaked
    assert {p.name for p in (tmp_path / "hydra" / "render" / ".hydra").iterdir()} == {
        "config.yaml", "hydra.yaml", "overrides.yaml"}
