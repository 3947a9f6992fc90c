"""LesionDetectMRML: the Qt-free layer between LesionDetectLib and MRML.

Used by the LesionDetect module inside Slicer and, with the slicer-core wheel, by the .mrb
writer and the tests.  Functions take the scene and logic objects they need (no slicer.app,
no slicer.modules):

- headless: a scene with its logics without the Slicer application (slicer-core);
- convert:  Prediction parts <-> volume, segmentation, ROI, fiducial and table nodes;
- overlay:  a Prediction shown in a scene, live threshold, score filter, findings;
- export:   corrected results -> a dataset case (never overwriting);
- process:  `lesiondetect infer` as a child process with progress and cancel;
- logic:    the module's logic (run, poll, cancel, result in the scene, display, export) with
            an injected runner; LesionDetect.py's LesionDetectLogic is built on it; its review
            methods are logic_review.py, its learn-from-corrections methods logic_learn.py;
- review:   per-finding review states (kept on the nodes by review_records.py), navigation, export record;
- learn:    fine-tune and ranking as child processes; versions.py (the model library's versions),
            nextcase.py (which unreviewed case to load next);
- dependencies: what Slicer's Python lacks of Resources/requirements.txt, and installing it;
- bundle:   a Slicer scene bundle (.mrb) from an image and a prediction folder;
- samples:  synthetic studies with their Predictions (sample data, self-tests);
- selftest: the bodies of the module's self-tests (LesionDetectTest), installed with the module.
"""
