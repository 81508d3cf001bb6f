"""The single-frame methods trace as whole graphs (no graph breaks), so ``torch.compile`` can fuse them."""

from __future__ import annotations

import torch
import torch._dynamo as dynamo

from sam2core.build import build_model


@torch.no_grad()
def test_no_graph_breaks():
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", image_size=64)
    images = torch.randn(2, 3, 64, 64)
    feats = model.encode_image(images)
    points, labels = torch.rand(2, 1, 2) * 64, torch.ones(2, 1, dtype=torch.int32)
    out = model.decode_masks(feats.feat, feats.high_res, points, labels, None, True)
    memory, _ = model.encode_memory(feats.feat, out.high_res, out.object_score_logits, False)
    calls = {
        "encode_image": (model.encode_image, (images,)),
        "decode_masks": (model.decode_masks, (feats.feat, feats.high_res, points, labels, None, True, True)),
        "mask_as_output": (model.mask_as_output, (feats.feat, feats.high_res, torch.rand(2, 1, 64, 64) > 0.5)),
        "encode_memory": (model.encode_memory, (feats.feat, out.high_res, out.object_score_logits, True)),
        "attend_memory": (model.attend_memory, (feats.feat, feats.pos, [memory.bfloat16(), memory], [6, 0],
                                                out.obj_ptr[:, None].expand(-1, 3, -1), torch.tensor([4, 1, 2]), 20)),
    }
    side = model.config.feat_size
    prefix = model.memory_prefix(feats.feat[:1], feats.pos[:1])
    slots = (prefix, torch.randn(2, 8, 64, side, side).bfloat16(), torch.rand(2, 8) > 0.5, (6, 6, 5, 4, 3, 2, 1, 0),
             torch.randn(2, 17, 256), torch.rand(2, 17), torch.rand(2, 17) > 0.5)
    calls["attend_memory_slots"] = (model.attend_memory_slots, slots)
    breaks = {}
    for name, (fn, args) in calls.items():
        dynamo.reset()
        report = dynamo.explain(fn)(*args)
        breaks[name] = (report.graph_break_count, [str(r.reason) for r in report.break_reasons][:3])
    assert all(count == 0 for count, _ in breaks.values()), breaks
