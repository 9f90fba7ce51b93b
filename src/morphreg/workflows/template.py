"""An unbiased population template (Joshi et al. 2004; Avants et al. 2010, ANTs' SyGN).

The template lives on the grid of the first image (sorted by name); images on other grids are
resampled onto it through their affines, as ``morphreg register`` does. It is built in stages:

0. **Affine average.** Every image is registered affinely to the first image; the moved images,
   each on the intensity scale the registration uses (:func:`morphreg.data.intensity_range`),
   are averaged.
1. **K deformable iterations.** Every image is registered to the current template (affine, then
   the deformable method, composed into one field), and the moved images are averaged.

After every stage the average is moved by the inverse of the mean deformation, so that the
template is not biased towards any subject (nor, after stage 0, towards the first one): with
``u_i`` the displacement of subject ``i`` to the template (pull-back, template voxel ``x`` ->
subject point ``x + u_i(x)``) and ``ū`` their mean, the new template is ``T(y) = A(y + v(y))``
with ``v`` the inverse of ``ū`` (:func:`morphreg.inverse.invert_disp`; a fixed-point inverse
for every method, networks and velocity methods too), ``A`` the average. The mean displacement
norm of each stage is logged: it goes to ~0 once the template sits at the population's centre.

The final subject warps are those of the last stage composed with that last move
(``u_i(y + v(y)) + v(y)``), so they map the final template onto each subject; their mean is
zero up to the residual of the inverse. The log-Jacobian of each (the input of tensor-based
morphometry) and, with label maps, the majority vote of the warped label maps
(:func:`morphreg.workflows.segment.majority_vote`) are written beside it.

Every registration is one :class:`~morphreg.workflows.jobs.PairJob` (``subject -> current
template``: load, register, write the moved image and the warp; the one job of every cohort)
handed to a ``runner(jobs) -> statuses`` (in process by default; the command line passes the
engine of :mod:`morphreg.workflows.runner`: local worker processes or a Dask scheduler). Jobs are
picklable and idempotent: a job whose outputs exist is skipped, so ``resume=True`` continues a
killed build where it stopped.

Files (``out`` = ``T``): ``T/template.nii.gz`` (written last), ``T/template_seg.nii.gz``,
``T/subjects/<name>_warp.nii.gz`` and ``<name>_logjac.nii.gz``, ``T/log.csv`` (one row per
stage), ``T/qc.png`` and ``T/qc.html``, ``T/settings.json``, and ``T/iterations/NN/`` (each
stage's template, and the per-subject files of the last stage).

Error messages name this module's parameters in backquotes; the command line names its flags.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, io, spatial
from .._files import atomic_write_text
from ..data import as_label_map
from ..data.preprocess import apply_range, intensity_range
from ..inverse import invert_disp
from .jobs import JobStatus, PairJob
from .outputs import OutputPaths
from .run_folder import as_json, check_run_folder
from .spec import RegistrationSpec

PathLike = str | Path

#: ``runner(jobs) -> statuses``: runs :class:`~.jobs.PairJob` s (idempotently: a job whose outputs
#: exist is skipped) and returns their :class:`~.jobs.JobStatus` in job order; e.g.
#: ``lambda jobs: engine.run_jobs(jobs, resume=True)`` of :func:`morphreg.workflows.runner.open_engine`.
JobRunner = Callable[[Sequence[PairJob]], Sequence[JobStatus]]

#: Determinants below this are clipped before the log (``<= 0`` is folding).
LOGJAC_FLOOR = 1e-3


def run_in_process(jobs: Sequence[PairJob]) -> list[JobStatus]:
    """The default runner: the jobs one after the other in this process (finished ones skipped)."""
    return [job.run(resume=True) for job in jobs]


def affine_stage(spec: RegistrationSpec) -> RegistrationSpec:
    """The registration of the affine stage: affine, with ``spec``'s normalisation and device."""
    return RegistrationSpec(method="affine", normalise=spec.normalise, device=spec.device)


def describe(spec: RegistrationSpec) -> str:
    """A short name of a registration for the log, e.g. ``affine + dense``."""
    name = f"network {spec.model}" if spec.method == "network" else spec.method
    return f"affine + {name}" if spec.affine and spec.method not in ("affine", "rigid") else name


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Subject:
    """One input image (and label map), with the intensity range its registration normalises by."""

    name: str
    image: Path
    seg: Path | None
    lo: float
    hi: float


def subject_names(images: Sequence[Path]) -> list[str]:
    """Output names of the images: file names without extension (refused when two collide)."""
    names = [io.split_ext(p)[0] or p.name for p in images]
    seen: dict[str, Path] = {}
    for name, path in zip(names, images):
        if name in seen:
            raise ValueError(f"`images` '{seen[name]}' and '{path}' have the same name '{name}'; each subject "
                             "needs its own (the outputs are named after it)")
        seen[name] = path
    return names


def check_subjects(images: Sequence[PathLike], segs: Sequence[PathLike] | None,
                   normalise: str | None) -> tuple[list[Subject], io.Volume]:
    """Read every input once, before any work; return the subjects and the template grid.

    Raises:
        ValueError: fewer than 2 images, a different dimensionality, a constant image, a label
            map count or grid that does not match (and every read error of :mod:`morphreg.io`:
            NaN, corrupt files, ...).
    """
    paths = [Path(p) for p in images]
    if len(paths) < 2:
        raise ValueError(f"`images` holds {len(paths)} image(s); a template needs at least 2")
    seg_paths = [Path(p) for p in segs] if segs is not None else None
    if seg_paths is not None and len(seg_paths) != len(paths):
        raise ValueError(f"`segs` holds {len(seg_paths)} label maps but `images` holds {len(paths)} images; give "
                         "one label map per image (the same order, sorted by name)")
    names = subject_names(paths)
    grid: io.Volume | None = None
    subjects = []
    for k, (name, path) in enumerate(zip(names, paths)):
        volume = io.load_volume(path)
        if grid is None:
            grid = volume
        elif volume.ndim != grid.ndim:
            raise ValueError(f"`images` '{path}' is {volume.ndim}D but '{paths[0]}' is {grid.ndim}D; every image "
                             "of a template must have the same dimensionality")
        data = volume.data.astype(np.float32)
        if float(data.max()) == float(data.min()):
            raise ValueError(f"`images` '{path}' is a constant image (every voxel {float(data.min()):g}); there is "
                             "nothing to register")
        lo, hi = intensity_range(data, normalise) if normalise else (float(data.min()), float(data.max()))
        seg = None
        if seg_paths is not None:
            seg = seg_paths[k]
            labels = io.load_volume(seg)
            as_label_map(labels.data, f"`segs` '{seg}'")
            if not io.same_grid(labels, volume):
                raise ValueError(f"`segs` '{seg}' (shape {labels.shape}) is not on the grid of its image '{path}' "
                                 f"(shape {volume.shape}, or a different affine)")
        subjects.append(Subject(name, path, seg, lo, hi))
    assert grid is not None
    return subjects, grid


# ---------------------------------------------------------------------------------------------
# one stage: register everyone, average, move by the inverse mean deformation


@dataclass(frozen=True)
class IterationLog:
    """One stage of the build (a row of ``log.csv``).

    Attributes:
        iteration: 0 for the affine average, then 1..K.
        registration: what registered the subjects (``affine``, ``affine + dense``, ...).
        mean_disp_norm: mean over the grid of ``|ū|``, the mean displacement of the subjects to the
            previous template, in voxels (the bias that this stage removes; -> ~0).
        max_disp_norm: its maximum, in voxels.
        inverse_residual: largest residual ``|v + ū(y + v)|`` of the inverse, in voxels.
        template_change: root mean square intensity change of the template from the previous one
            (intensities on [0, 1]).
        sharpness: mean gradient magnitude of the template (intensity per voxel; grows as it sharpens).
        seconds: wall time of the stage (registrations and update).
        registration_seconds: sum of the jobs' wall times (load, register, write; over all workers).
    """

    iteration: int
    registration: str
    mean_disp_norm: float
    max_disp_norm: float
    inverse_residual: float
    template_change: float
    sharpness: float
    seconds: float
    registration_seconds: float


@dataclass
class TemplateUpdate:
    """The averaged, moved template of one stage and the mean deformation it was moved by.

    Attributes:
        template: ``(*spatial)`` float32 template on [0, 1].
        mean_disp: ``(1, ndim, *spatial)`` mean subject displacement ``ū`` (voxels).
        shift: ``(1, ndim, *spatial)`` its inverse ``v`` (zeros when the update is off).
        residual: largest residual of the inverse, voxels.
    """

    template: np.ndarray
    mean_disp: torch.Tensor
    shift: torch.Tensor
    residual: float


def average_and_update(moved: Iterable[np.ndarray], disps: Iterable[np.ndarray], *, unbiased: bool = True,
                       inverse_iterations: int = 100) -> TemplateUpdate:
    """Average ``moved`` (each ``(*spatial)`` on [0, 1]) and move it by the inverse mean of ``disps``.

    Both are consumed one item at a time (running sums), so a large cohort is never held in memory.

    Args:
        moved: the subjects warped to the current template, intensity-normalised.
        disps: their displacements ``(ndim, *spatial)`` (voxels, pull-back) to the current template.
        unbiased: move the average by the inverse of the mean deformation (``False``: keep it
            where the current template is, biased towards it).
        inverse_iterations: fixed-point iterations of the inverse.

    Returns:
        :class:`TemplateUpdate`.
    """
    fn = "morphreg.workflows.template.average_and_update"
    image_sum = disp_sum = None
    count = 0
    for image, disp in zip(moved, disps, strict=True):
        image_sum = np.asarray(image, np.float64) + (0.0 if image_sum is None else image_sum)
        disp_sum = np.asarray(disp, np.float64) + (0.0 if disp_sum is None else disp_sum)
        count += 1
    if image_sum is None or disp_sum is None:
        raise ValueError(f"{fn}: arguments 'moved' and 'disps' are empty")
    mean_image = torch.from_numpy((image_sum / count).astype(np.float32))
    mean_disp = torch.from_numpy((disp_sum / count).astype(np.float32))[None]
    if not unbiased:
        return TemplateUpdate(mean_image.numpy(), mean_disp, torch.zeros_like(mean_disp), 0.0)
    inverse = invert_disp(mean_disp, iterations=inverse_iterations, tolerance=1e-3)
    template = spatial.warp(mean_image[None, None], inverse.inverse_disp)[0, 0]
    return TemplateUpdate(template.numpy(), mean_disp, inverse.inverse_disp, inverse.residual_max)


def sharpness(template: np.ndarray) -> float:
    """Mean gradient magnitude of an image ``(*spatial)`` (central differences, per voxel)."""
    gradients = np.gradient(template.astype(np.float64))
    return float(np.mean(np.sqrt(sum(g**2 for g in gradients))))


def compose_with_shift(disp: np.ndarray, shift: torch.Tensor) -> np.ndarray:
    """A subject's field ``u`` ``(ndim, *spatial)`` after the template moved by ``v`` ``(1, ndim, *spatial)``:
    ``v(y) + u(y + v(y))`` (the subject seen from the moved template)."""
    return spatial.compose(torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))[None], shift)[0].numpy()


def log_jacobian(disp: np.ndarray) -> tuple[np.ndarray, float]:
    """``(log det J, folding fraction)`` of a field ``(ndim, *spatial)``; determinants below
    :data:`LOGJAC_FLOOR` are clipped before the log."""
    det = spatial.jacobian_det(torch.from_numpy(np.ascontiguousarray(disp)).double()[None])[0].numpy()
    return np.log(np.maximum(det, LOGJAC_FLOOR)).astype(np.float32), float((det <= 0).mean())


# ---------------------------------------------------------------------------------------------
# the build


@dataclass
class TemplateResult:
    """What :func:`build_template` made.

    Attributes:
        template: the template volume (the first image's grid).
        template_seg: the majority vote of the warped label maps, when label maps were given.
        log: one :class:`IterationLog` per stage (the affine average first).
        subjects: subject names, in input order.
        out: the output folder.
        seconds: wall time of the whole build.
        folding: per subject, the fraction of its final warp's voxels with det J <= 0.
    """

    template: io.Volume
    template_seg: io.Volume | None
    log: list[IterationLog]
    subjects: list[str]
    out: Path
    seconds: float
    folding: dict[str, float] = field(default_factory=dict)


class TemplateDir:
    """The files of a template folder, named in one place."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self.template = self.root / "template.nii.gz"
        self.template_seg = self.root / "template_seg.nii.gz"
        self.subjects = self.root / "subjects"
        self.log = self.root / "log.csv"
        self.settings = self.root / "settings.json"
        self.qc_png = self.root / "qc.png"
        self.qc_html = self.root / "qc.html"

    def stage(self, k: int) -> Path:
        return self.root / "iterations" / f"{k:02d}"

    def stage_template(self, k: int) -> Path:
        return self.stage(k) / "template.nii.gz"

    def stage_log(self, k: int) -> Path:
        return self.stage(k) / "stage.json"

    def warp(self, name: str) -> Path:
        return self.subjects / f"{name}_warp.nii.gz"

    def logjac(self, name: str) -> Path:
        return self.subjects / f"{name}_logjac.nii.gz"


def _settings(subjects: Sequence[Subject], spec: RegistrationSpec, unbiased: bool) -> dict[str, Any]:
    spec_dict = asdict(spec)
    for where in ("device", "progress"):  # where and how visibly it runs does not change the result
        spec_dict.pop(where)
    settings = {"images": [str(s.image.resolve()) for s in subjects],
                "segs": [str(s.seg.resolve()) if s.seg else None for s in subjects],
                "registration": spec_dict, "unbiased": unbiased}
    return as_json(settings)  # as read back from settings.json (tuples become lists)


def _check_out(paths: TemplateDir, settings: dict[str, Any], resume: bool) -> None:
    """A new build needs an empty (or new) folder; a resumed one the same settings."""
    check_run_folder(paths.root, paths.settings.name, settings, resume, what="a template build", noun="build")


def _write_log(paths: TemplateDir, log: Sequence[IterationLog]) -> None:
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = [f.name for f in fields(IterationLog)]
    writer.writerow(names)
    for row in log:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in (getattr(row, n) for n in names)])
    atomic_write_text(paths.log, buffer.getvalue())


def _stage_jobs(k: int, fixed: Path | None, spec: RegistrationSpec, subjects: Sequence[Subject],
                paths: TemplateDir) -> list[PairJob]:
    folder = paths.stage(k)
    return [PairJob(i + 1, s.name, str(s.image), str(fixed) if fixed else None,
                    OutputPaths(str(folder / f"{s.name}_moved.nii.gz"), str(folder / f"{s.name}_warp.nii.gz")), spec)
            for i, s in enumerate(subjects)]


def _moved_images(subjects: Sequence[Subject], jobs: Sequence[PairJob]) -> Iterable[np.ndarray]:
    """The moved images of a stage, each on its subject's registration intensity scale."""
    for subject, job in zip(subjects, jobs):
        yield apply_range(io.load_volume(job.outputs.moved).data, subject.lo, subject.hi)


def _warps(jobs: Sequence[PairJob]) -> Iterable[np.ndarray]:
    for job in jobs:
        yield io.load_warp(str(job.outputs.warp)).disp


def _run_stage(k: int, fixed: Path, spec: RegistrationSpec, subjects: Sequence[Subject], paths: TemplateDir,
               grid: io.Volume, runner: JobRunner, unbiased: bool,
               previous: np.ndarray | None) -> tuple[TemplateUpdate, IterationLog, list[PairJob]]:
    """Register every subject to ``fixed`` with ``spec``, average, move; write the stage's template."""
    start = time.perf_counter()
    jobs = _stage_jobs(k, fixed, spec, subjects, paths)
    statuses = list(runner(jobs))
    failed = [status for status in statuses if status.status == "error"]
    if failed or len(statuses) != len(jobs):
        first = f"first: {failed[0].name}: {failed[0].message}" if failed else "some were not run"
        raise RuntimeError(f"iteration {k}: {len(failed) or len(jobs) - len(statuses)} of {len(jobs)} subject(s) "
                           f"could not be registered to the template ({first}); `resume` continues the build")
    update = average_and_update(_moved_images(subjects, jobs), _warps(jobs), unbiased=unbiased)
    norm = update.mean_disp.norm(dim=1)
    change = float(np.sqrt(np.mean((update.template - previous) ** 2))) if previous is not None else float("nan")
    row = IterationLog(k, describe(spec), float(norm.mean()), float(norm.max()), update.residual, change,
                       sharpness(update.template), time.perf_counter() - start,
                       float(sum(st.seconds for st in statuses if st.status == "done")))
    atomic_write_text(paths.stage_log(k), json.dumps(asdict(row)))
    io.save_volume(io.Volume(update.template, grid.affine, grid.header), paths.stage_template(k),
                   description=f"morphreg {__version__}: template, iteration {k}")
    return update, row, jobs


def _resumed_stage(k: int, paths: TemplateDir, subjects: Sequence[Subject],
                   spec: RegistrationSpec) -> tuple[np.ndarray, IterationLog, list[PairJob]]:
    row = IterationLog(**json.loads(paths.stage_log(k).read_text(encoding="utf-8")))
    jobs = _stage_jobs(k, None, spec, subjects, paths)
    return io.load_volume(paths.stage_template(k)).data.astype(np.float32), row, jobs


def _drop_subject_files(jobs: Sequence[PairJob]) -> None:
    for job in jobs:
        for path in job.output_files():
            path.unlink(missing_ok=True)


def _finish(paths: TemplateDir, subjects: Sequence[Subject], grid: io.Volume, jobs: Sequence[PairJob],
            shift: torch.Tensor) -> tuple[io.Volume | None, dict[str, float]]:
    """Write each subject's final warp and log-Jacobian; vote the template's labels."""
    from .segment import majority_vote

    votes, folding = [], {}
    for subject, disp in zip(subjects, _warps(jobs)):
        disp = compose_with_shift(disp, shift)
        io.save_warp(disp, paths.warp(subject.name), grid.affine, header=grid.header)
        logjac, folding[subject.name] = log_jacobian(disp)
        io.save_volume(io.Volume(logjac, grid.affine, grid.header), paths.logjac(subject.name),
                       description=f"morphreg {__version__}: log det J of {subject.name} (template -> subject)")
        if subject.seg is not None:
            seg = io.load_volume(subject.seg)
            seg.data = as_label_map(seg.data, f"`segs` '{subject.seg}'")
            if not io.same_grid(seg, grid):
                seg = io.resample_to(seg, grid, order=0)
            moved = spatial.warp(io.to_tensor(seg), torch.from_numpy(disp)[None], mode="nearest")[0, 0]
            votes.append(moved.numpy())
    if not votes:
        return None, folding
    labels = io.Volume(majority_vote(votes), grid.affine, grid.header)
    io.save_volume(labels, paths.template_seg, description=f"morphreg {__version__}: template labels (majority vote)")
    return labels, folding


def _write_qc(paths: TemplateDir, templates: Sequence[np.ndarray], log: Sequence[IterationLog],
              grid: io.Volume) -> None:
    from ..viz.template import plot_template_iterations
    from .report_html import write_template_page

    titles = ["affine average" if row.iteration == 0 else f"iteration {row.iteration}" for row in log]
    plot_template_iterations(templates, grid.affine, paths.qc_png, titles=titles,
                             suptitle="template after each iteration")
    write_template_page(paths.qc_html, paths.qc_png, paths.log)


def build_template(
    images: Sequence[PathLike],
    segs: Sequence[PathLike] | None,
    out: PathLike,
    registration_spec: RegistrationSpec,
    iterations: int = 4,
    runner: JobRunner = run_in_process,
    *,
    unbiased: bool = True,
    resume: bool = False,
    keep_intermediate: bool = False,
    report: Callable[[str], None] | None = None,
) -> TemplateResult:
    """Build an unbiased template of ``images`` into the folder ``out``.

    Args:
        images: the subjects' images (2D or 3D, one dimensionality; the first one's grid is the
            template's, the others are resampled onto it through their affines).
        segs: one label map per image (same order), or ``None``; gives ``template_seg.nii.gz``.
        out: output folder (new or empty, or a previous build with ``resume``).
        registration_spec: how a subject is registered to the template in the K iterations.
        iterations: K, the deformable iterations after the affine average (0: the affine
            average only).
        runner: ``runner(jobs) -> statuses`` (:data:`JobRunner`; in process by default).
        unbiased: move the template by the inverse mean deformation after every stage (the
            point of the method; ``False`` only to show the bias it removes).
        resume: continue a build in ``out`` (finished stages are kept, finished jobs skipped).
        keep_intermediate: keep every stage's moved images and warps (default: only the last
            stage's; every stage's template is kept).
        report: receives one line per finished stage.

    Returns:
        :class:`TemplateResult`.

    Raises:
        ValueError: bad inputs (before anything is written), or an ``out`` that holds another build.
        RuntimeError: a subject that could not be registered (the build stops; ``resume`` continues it).
    """
    fn = "morphreg.workflows.template.build_template"
    start = time.perf_counter()
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"{fn}: argument 'iterations' must be an integer >= 0, got {iterations!r}")
    subjects, grid = check_subjects(images, segs, registration_spec.normalise)
    if registration_spec.method == "network":  # a network that does not fit is refused before any work
        registration_spec.network(grid.ndim, registration_spec.torch_device())
    paths = TemplateDir(out)
    settings = _settings(subjects, registration_spec, unbiased)
    _check_out(paths, settings, resume)
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.settings, json.dumps(settings, indent=1))
    templates: list[np.ndarray] = []
    log: list[IterationLog] = []
    fixed = subjects[0].image
    previous = None
    shift = None
    jobs: list[PairJob] = []
    for k in range(iterations + 1):
        spec = affine_stage(registration_spec) if k == 0 else registration_spec
        if resume and paths.stage_template(k).exists() and paths.stage_log(k).exists():
            template, row, stage_jobs = _resumed_stage(k, paths, subjects, spec)
            shift = None  # recomputed below if this is the last stage
        else:
            update, row, stage_jobs = _run_stage(k, fixed, spec, subjects, paths, grid, runner, unbiased, previous)
            template, shift = update.template, update.shift
        if jobs and not keep_intermediate:
            _drop_subject_files(jobs)
        jobs, previous, fixed = stage_jobs, template, paths.stage_template(k)
        templates.append(template)
        log.append(row)
        _write_log(paths, log)
        if report is not None:
            report(f"iteration {k} ({row.registration}): mean displacement to the previous template "
                   f"{row.mean_disp_norm:.3g} voxels (max {row.max_disp_norm:.3g}), sharpness {row.sharpness:.4g}, "
                   f"{row.seconds:.1f} s")
    if shift is None:  # the last stage was resumed: recompute its move from its files
        shift = average_and_update(_moved_images(subjects, jobs), _warps(jobs), unbiased=unbiased).shift
    template_seg, folding = _finish(paths, subjects, grid, jobs, shift)
    _write_qc(paths, templates, log, grid)
    template = io.Volume(templates[-1], grid.affine, grid.header)
    io.save_volume(template, paths.template, description=f"morphreg {__version__}: template of {len(subjects)} images")
    return TemplateResult(template, template_seg, log, [s.name for s in subjects], paths.root,
                          time.perf_counter() - start, folding)


__all__ = ["IterationLog", "JobRunner", "TemplateDir", "TemplateResult", "TemplateUpdate", "affine_stage",
           "average_and_update", "build_template", "check_subjects", "compose_with_shift", "describe", "log_jacobian",
           "run_in_process", "sharpness"]
