"""The schemas of the command sections: ``fit``, ``teacher``, ``head``, ``student``, ``synth``,
``pretrain`` and ``demo``. The YAML presets (``dtlabel/configs/<section>/<preset>.yaml``) give the
values and document them; these classes give each key its type and range. The defaults here are
the tiny preset's, so that a section built in code (tests, notebooks) is a small, valid one.

Every training section holds its optimiser as ``optim`` (:class:`dtlabel.engine.OptimConfig`, the
engine's own settings), so ``<section>.optim.lr`` is one name in every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dtlabel.engine import OptimConfig
from dtlabel.schema.check import Size, listof, num, sub

Select = Literal["best", "last"]
Schedule = Literal["auto", "steps", "budget"]


@dataclass
class Optim(OptimConfig):
    """``<section>.optim``: the engine's :class:`OptimConfig`, with the ranges of its values."""

    lr: float | None = num(1e-3, ge=0)           # 0: frozen weights (a check, or a probe)
    weight_decay: float | None = num(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = num(0, ge=0)
    min_lr_ratio: float = num(0.0, ge=0, le=1)
    grad_clip: float = num(0.0, ge=0)
    norm_bias_decay: bool = False
    encoder_lr_mult: float = num(1.0, gt=0)
    schedule: Schedule = "auto"


@dataclass
class GanSection:
    """``fit.gan``: the GAN teacher of ``fit.family=gan`` (``dtlabel.teachers.gan_fit``)."""

    z_dim: int = num(32, ge=1)
    width: int = num(8, ge=1)                    # generator channels at full size (doubling per halving)
    d_width: int = num(8, ge=1)                  # discriminator's and encoder's channels at full size
    max_channels: int = num(128, ge=1)
    optim: Optim = sub(Optim)
    r1_gamma: float = num(1.0, ge=0)
    diffaug: list[str] = listof("color", "translation", "cutout")  # DiffAugment policies ([] : none)
    ema_decay: float = num(0.99, ge=0, lt=1)
    encoder_steps: int = num(12, ge=0)           # 0: no encoder (the teacher then samples only)
    encoder_optim: Optim = sub(Optim)
    perceptual_weight: float = num(1.0, ge=0)
    cycle_weight: float = num(1.0, ge=0)


@dataclass
class FitSection:
    """``fit``: training a teacher (``dtlabel fit-teacher``): a DDPM (``family=ddpm``) or a GAN."""

    family: Literal["ddpm", "gan"] = "ddpm"
    gan: GanSection = sub(GanSection)
    model: dict[str, Any] = sub(dict)            # diffusers UNet2DModel arguments
    size: Size | None = None
    scale: float = num(1.0, gt=0, le=1)
    init_from: str | None = None
    include_labeled: bool = True
    steps: int = num(12, ge=1)
    batch_size: int = num(4, ge=1)
    optim: Optim = sub(Optim)
    ema_decay: float = num(0.99, ge=0, lt=1)
    hflip: bool = True
    num_train_timesteps: int = num(1000, ge=2)
    beta_schedule: str = "linear"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    cpu_bf16: bool = False
    snr_gamma: float | None = num(None, gt=0)
    checkpoint_every: int = num(4, ge=0)
    keep_last: int = num(1, ge=1)
    keep_every: int | None = num(None, ge=1)
    export_dtype: Literal["fp32", "fp16"] = "fp32"
    max_minutes: float | None = num(None, ge=0)
    log_every: int = num(2, ge=1)
    sample_n: int = num(4, ge=0)
    sample_steps: int = num(4, ge=1)


@dataclass
class TeacherSection:
    """``teacher``: how commands read a teacher's features and draw its samples."""

    family: str = "auto"
    blocks: list[Any] | None = None
    timesteps: list[int] = listof(50)
    concat_timesteps: bool = True
    noise_draws: int = num(1, ge=1)
    batch_timesteps: bool = True
    early_stop: bool = True
    allow_any_size: bool = False
    sampler: str = "ddim"
    sample_steps: int = num(4, ge=1)
    eta: float = num(0.0, ge=0)
    sample_features: str = "encode"
    noise_device: Literal["cpu", "device"] = "cpu"
    channels_last: bool = False
    compile: bool = False
    prompt: str = ""
    guidance_scale: float = num(1.0, ge=0)


@dataclass
class LabeledTraining:
    """The keys train-head's and train-student's sections share: the labeled split, augmentation,
    validation and selection, pictures, the budget and precision."""

    label_seed: int | None = None
    epochs: int = num(2, ge=1)
    batch_size: int = num(4, ge=1)
    optim: Optim = sub(Optim)                    # head: lr / weight_decay null = the head kind's own
    hflip: bool = True
    scale: tuple[float, float] | None = (0.75, 1.25)
    val_size: int = num(8, ge=0)
    select: Select = "best"
    eval_batch_size: int = num(16, ge=1)
    overlays: int = num(4, ge=0)
    log_every: int = num(1, ge=1)
    max_minutes: float | None = num(None, ge=0)
    cpu_bf16: bool = False


@dataclass
class InterpreterOptions:
    width: int = num(32, ge=1)
    dropout: float = num(0.1, ge=0, lt=1)
    dice_weight: float = num(3.0, ge=0)
    norm_groups: int = num(32, ge=1)
    max_resolution_stride: int = num(1, ge=1)


@dataclass
class MlpEnsembleOptions:
    members: int = num(3, ge=1)
    hidden: int | None = num(None, ge=1)
    vote: Literal["mean", "majority"] = "mean"
    pixels_per_image: int = num(256, ge=1)


@dataclass
class HeadSection(LabeledTraining):
    """``head``: the segmentation head on teacher features (``dtlabel train-head``)."""

    kind: str = "interpreter"
    interpreter: InterpreterOptions = sub(InterpreterOptions)
    mlp_ensemble: MlpEnsembleOptions = sub(MlpEnsembleOptions)
    steps: int | None = num(None, ge=1)
    micro_batch: int | None = num(None, ge=1)
    teacher_batch: int | None = num(None, ge=1)
    eval_every: int = num(1, ge=1)
    cache: bool = False
    cache_dir: str | None = None
    cache_draws: int = num(2, ge=1)


@dataclass
class UnimatchOptions:
    threshold: float = num(0.95, ge=0, le=1)
    unlabeled_batch_size: int | None = num(None, ge=2)
    fp_dropout: float = num(0.5, ge=0, lt=1)
    cutmix: float = num(0.5, ge=0, le=1)


@dataclass
class StudentSection(LabeledTraining):
    """``student``: the smp student (``dtlabel train-student``)."""

    arch: str = "Unet"
    encoder: str = "tu-mobilenetv3_small_050"
    decoders: dict[str, dict[str, Any]] = sub(dict)  # the preset's smp arguments for each architecture
    kwargs: dict[str, Any] = sub(dict)           # more smp.create_model arguments, over the decoder's
    epoch_steps: int | None = num(None, ge=1)
    dice_weight: float = num(1.0, ge=0)
    synth_loss: Literal["soft", "hard"] = "soft"
    tau: float = num(4.0, gt=0)
    drop_uncertain: float = num(0.0, ge=0, lt=1)
    synth_samples: int | None = num(None, ge=1)
    drop_leaked: bool = False
    real_ratio: float = num(0.25, gt=0, lt=1)
    stage2_epochs: int | None = num(None, ge=0)
    unlabeled: Literal["unimatch"] | None = None
    unimatch: UnimatchOptions = sub(UnimatchOptions)
    shuffle_buffer: int = num(64, ge=0)


@dataclass
class SynthSection:
    """``synth``: pseudo-label shards (``dtlabel synthesize``)."""

    samples_per_shard: int = num(8, ge=1)
    batch_size: int = num(4, ge=1)
    pool_images: int | None = num(32, ge=1)
    sample_steps: int | None = num(None, ge=1)
    base_seed: int | None = None
    size: Size | None = None
    logits_downsample: int = num(2, ge=0)          # 0: no logits
    image_format: Literal["png", "jpg"] = "png"
    jpg_quality: int = num(95, ge=1, le=100)
    score_top: float = num(0.1, gt=0, le=1)
    queue_size: int = num(4, ge=1)
    encode_workers: int = num(1, ge=1)
    skip_corrupt: bool = False
    verify_resume: bool = True
    preview: int = num(8, ge=0)
    cpu_bf16: bool = False


@dataclass
class PretrainSection:
    """``pretrain``: feature distillation into a backbone (``dtlabel pretrain``)."""

    backbone: str = "resnet18"
    vit_pyramid: Literal["simple", "reassemble"] = "simple"
    width: int = num(32, ge=1)
    mapping: dict[str, int] | None = None
    teacher_norm: Literal["chw", "c", "none"] = "chw"
    mse_weight: float = num(1.0, ge=0)
    at_weight: float = num(10.0, ge=0)
    kd_weight: float = num(1.0, ge=0)
    tau: float = num(4.0, gt=0)
    include_labeled: bool = True
    source: Literal["auto", "images", "samples"] = "auto"  # samples: the teacher's own draws (auto: when it reads no images)
    epochs: int = num(2, ge=1)
    steps: int | None = num(8, ge=1)
    batch_size: int = num(4, ge=1)
    optim: Optim = sub(Optim)
    hflip: bool = True
    teacher_batch: int | None = num(None, ge=1)
    cache_draws: int = num(0, ge=0)
    cache_dir: str | None = None
    log_every: int = num(1, ge=1)
    checkpoint_every: int = num(4, ge=1)
    keep_last: int = num(1, ge=1)
    keep_every: int | None = num(None, ge=1)
    max_minutes: float | None = num(None, ge=0)
    pictures: int = num(4, ge=0)
    cpu_bf16: bool = False


@dataclass
class DemoSection:
    """``demo``: the end-to-end run's stages; each stage's list holds its command-line words."""

    labels: int = num(8, ge=1)
    fit_teacher: bool = True
    teacher_model: str = "models/default"
    with_pretrain: bool = True
    data: list[str] = listof()
    teacher: list[str] = listof()
    pretrain: list[str] = listof()
    head: list[str] = listof()
    synth: list[str] = listof()
    students: list[str] = listof()
    student: list[str] = listof()
    grid_images: int = num(4, ge=1)
    minutes: dict[str, Any] = sub(dict)
