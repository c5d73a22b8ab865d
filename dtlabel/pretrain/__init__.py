"""DreamTeacher pretraining: a timm backbone learns to regress a frozen teacher's features.

``model.py`` (backbone + FPN/PPM regressor, level matching), ``losses.py`` (MSE on normalised teacher
maps + attention transfer), ``task.py`` (the engine task, feature and mix distillation),
``export.py`` (the backbone in timm format, the feature picture). docs/METHOD.md §3.
"""
