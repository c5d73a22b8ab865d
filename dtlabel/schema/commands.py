"""The schemas of whole command configs: the keys every command shares, the ``data`` section (one
schema per data kind, chosen by ``data.kind``), each command's own keys and the sections it uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dtlabel.schema.check import Size, listof, num, sub
from dtlabel.schema.sections import (DemoSection, FitSection, HeadSection, PretrainSection, StudentSection,
                                     SynthSection, TeacherSection)


@dataclass
class DefaultData:
    """``data=default``: the generated shapes data set."""

    kind: str = "default"
    name: str = "default"
    root: str | None = None
    seed: int = 0
    n_unlabeled: int = num(2000, ge=0)
    n_labeled: int = num(200, ge=1)
    n_val: int = num(50, ge=0)
    n_test: int = num(200, ge=1)
    size: Size = Size((64, 64))
    style: str = "photo"


@dataclass
class Splits:
    train: Any = None      # null, "0001-0804" (id ranges), a list of ids or a .txt file of ids
    val: Any = None
    test: Any = None


@dataclass
class LabeledFolders:
    """The keys the folder-based data kinds share: where they are, their splits and label-free pools."""

    kind: str = "folder"
    name: str = "folder"
    root: str | None = None
    images: str = "images"
    splits: Splits = sub(Splits)
    unlabeled: list[str] = listof()
    unlabeled_splits: list[str] = listof("train")
    size: Size = Size((128, 128))


@dataclass
class FolderData(LabeledFolders):
    """``data=folder`` (and ``ccp``, ``camvid``): images + masks in folders."""

    masks: str = "masks"
    recursive: bool = False
    classes: Any = None
    classes_key: str = "classes"
    ignore_index: int | None = None


@dataclass
class CocoData(LabeledFolders):
    """``data=coco``: COCO instance or panoptic annotations."""

    kind: str = "coco"
    name: str = "coco"
    annotations: str = "annotations/instances_val2017.json"
    images: str = "val2017"
    panoptic_masks: str | None = None
    category_map: Any = None
    unmapped: str = "background"
    background: str = "background"
    ignore_index: int = 255
    size: Size = Size((256, 256))


@dataclass
class ImagesData:
    """``data=images``: a folder of images without labels."""

    kind: str = "images"
    name: str = "images"
    root: str | None = None
    size: Size = Size((64, 64))


DATA_KINDS: dict[str, type] = {"default": DefaultData, "folder": FolderData, "coco": CocoData, "images": ImagesData}


@dataclass
class Common:
    """The keys every command has (``configs/base.yaml``) and the preset's name."""

    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = num(0, ge=0)
    preset: str = "cpu"
    data: Any = None                  # checked against DATA_KINDS[data.kind]


@dataclass
class DataCheck(Common):
    max_problems: int = num(20, ge=0)


@dataclass
class DataPreview(Common):
    split: str = "train"
    n: int = num(16, ge=1)
    alpha: float = num(0.5, ge=0, le=1)


@dataclass
class Demo(Common):
    labels: int | None = num(None, ge=1)
    demo: DemoSection = sub(DemoSection)


@dataclass
class Eval(Common):
    teacher: TeacherSection = sub(TeacherSection)
    split: str = "test"
    size: Size | None = None
    batch_size: int = num(8, ge=1)
    overlays: int = num(8, ge=0)
    inputs: dict[str, Any] = sub(dict)


@dataclass
class Export(Common):
    inputs: dict[str, Any] = sub(dict)
    format: str = "png"
    drop_uncertain: float = num(0.0, ge=0, lt=1)
    min_area: int = num(0, ge=0)
    image_url_prefix: str = "/data/local-files/?d="


@dataclass
class FitTeacher(Common):
    fit: FitSection = sub(FitSection)


@dataclass
class Pretrain(Common):
    teacher: TeacherSection = sub(TeacherSection)
    pretrain: PretrainSection = sub(PretrainSection)
    inputs: dict[str, Any] = sub(dict)


@dataclass
class Report(Common):
    title: str | None = None
    grid_images: int = num(6, ge=0)


@dataclass
class Suggest(Common):
    teacher: TeacherSection = sub(TeacherSection)
    n: int | None = num(None, ge=1)
    inputs: dict[str, Any] = sub(dict)
    strategy: str = "typical"
    random_seed: int = 0
    uncertainty_weight: float = num(1.0, ge=0)
    batch_size: int = num(8, ge=1)
    contact_sheet: int = num(24, ge=0)


@dataclass
class Synthesize(Common):
    teacher: TeacherSection = sub(TeacherSection)
    synth: SynthSection = sub(SynthSection)
    n: int | None = num(None, ge=1)
    for_labeling: bool = False
    inputs: dict[str, Any] = sub(dict)


@dataclass
class ImportLabels(Common):
    inputs: dict[str, Any] = sub(dict)
    format: str = "cvat"
    classes: list[str] | None = None


@dataclass
class TrainHead(Common):
    teacher: TeacherSection = sub(TeacherSection)
    head: HeadSection = sub(HeadSection)
    labels: int | None = num(None, ge=0)
    label_ids: Any = None
    inputs: dict[str, Any] = sub(dict)


@dataclass
class TrainStudent(Common):
    student: StudentSection = sub(StudentSection)
    labels: int | None = num(None, ge=0)
    label_ids: Any = None
    inputs: dict[str, Any] = sub(dict)


COMMANDS: dict[str, type] = {
    "data_check": DataCheck, "data_preview": DataPreview, "demo": Demo, "eval": Eval, "export": Export,
    "fit_teacher": FitTeacher, "import_labels": ImportLabels, "pretrain": Pretrain, "report": Report, "suggest": Suggest,
    "synthesize": Synthesize, "train_head": TrainHead, "train_student": TrainStudent,
}
