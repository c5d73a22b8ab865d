"""Dense-prediction students: segmentation-models-pytorch models, built by name, saved for plain smp.

::

    model, spec = create_student("Unet", "tu-mobilenetv3_small_050", classes=7, encoder_depth=3,
                                 decoder_channels=[32, 16, 8])          # encoder_weights=None, always
    info = load_backbone(model, "weights.safetensors")                  # optional encoder init
    save_student("runs/train-student/x/student", model, spec, class_names=[...])
    model, desc = load_student("runs/train-student/x")                  # eval mode

A saved folder loads without dtlabel, in smp's own hub format (offline: a local folder)::

    model = smp.from_pretrained("runs/train-student/x/student")         # eval mode

or by hand from the descriptor::

    m = smp.create_model(d["arch"], encoder_name=d["encoder_name"], encoder_weights=None,
                         classes=d["classes"], in_channels=3, **d["smp_kwargs"])
    m.load_state_dict(safetensors.torch.load_file(".../student.safetensors"), strict=True)

Inputs are RGB images scaled to [-1, 1] (``x / 127.5 - 1``), the convention of every dtlabel model.
The folder's files: :mod:`dtlabel.students.model`; encoder initialisation: :mod:`dtlabel.students.backbone`.
"""

from __future__ import annotations

from dtlabel.students.model import (
    DESCRIPTOR,
    FORMAT,
    HUB_CONFIG,
    HUB_WEIGHTS,
    INPUT,
    WEIGHTS,
    StudentSpec,
    architectures,
    check_encoder,
    create_student,
    load_student,
    read_student,
    resolve_arch,
    save_student,
    student_folder,
)
from dtlabel.students.backbone import backbone_file, load_backbone

__all__ = ["StudentSpec", "architectures", "backbone_file", "check_encoder", "create_student", "load_backbone",
           "load_student", "read_student", "resolve_arch", "save_student", "student_folder", "DESCRIPTOR",
           "FORMAT", "HUB_CONFIG", "HUB_WEIGHTS", "INPUT", "WEIGHTS"]
