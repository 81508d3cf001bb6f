"""Dataset tools around the propagation job: read ground-truth annotations, make prompt manifests from them,
score predictions (J&F), draw masklets over the frames and export them to other layouts.

They share the pipeline's masklet, storage and video-source layers and know nothing of the job's driver or workers.
"""
