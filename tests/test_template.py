"""``morphreg template``: an unbiased population template, 2D and 3D (workflow, outputs, CLI, resume)."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg import io, spatial
from morphreg.cli import main
from morphreg.data import normalise_intensity, synthetic_shapes
from morphreg.data.preprocess import apply_range, intensity_range
from morphreg.workflows.jobs import PairJob
from morphreg.workflows.outputs import OutputPaths
from morphreg.workflows.spec import RegistrationSpec
from morphreg.workflows.template import TemplateDir, average_and_update, build_template, run_in_process

AFFINE = np.array([[1.5, 0, 0, -20.0], [0, 1.0, 0, 10.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
FAST = RegistrationSpec(method="dense", affine=True, iterations=(40, 20, 4))  # the greedy dense method, fewer iterations


def _shift(image: np.ndarray, offset, mode: str = "linear") -> np.ndarray:
    """``image`` moved by ``-offset`` voxels (pull-back ``image(x + offset)``), zeros outside."""
    t = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    disp = torch.zeros(1, image.ndim, *image.shape)
    for axis, value in enumerate(offset):
        disp[:, axis] = float(value)
    if mode == "nearest":
        return spatial.warp(t.long(), disp, mode="nearest", padding="zeros")[0, 0].numpy().astype(np.uint8)
    return spatial.warp(t.float(), disp, padding="zeros")[0, 0].numpy()


def _population(folder: Path, shape, offsets, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Images and label maps of one shape shifted by ``offsets`` (mean zero) into folder/img, folder/seg."""
    images, labels = synthetic_shapes(1, shape, n_labels=3, seed=seed, disp_std=0.0, noise_std=0.0)
    (folder / "img").mkdir(parents=True)
    (folder / "seg").mkdir()
    for i, offset in enumerate(offsets):
        nib.save(nib.Nifti1Image(_shift(images[0], offset), AFFINE), folder / "img" / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(_shift(labels[0], offset, "nearest"), AFFINE), folder / "seg" / f"s{i}.nii.gz")
    return images[0], labels[0]


def _inputs(folder: Path) -> tuple[list[Path], list[Path]]:
    return sorted((folder / "img").iterdir()), sorted((folder / "seg").iterdir())


OFFSETS_2D = [(-4, 3), (4, -3), (3, 4), (-3, -4)]  # mean zero; subject 0 is 5 voxels from the centre


@pytest.fixture(scope="module")
def shifted_2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shifted2d")
    base, base_seg = _population(folder, (40, 48), OFFSETS_2D)
    images, segs = _inputs(folder)
    unbiased = build_template(images, segs, folder / "T", FAST, iterations=1)
    biased = build_template(images, segs, folder / "T_biased", FAST, iterations=1, unbiased=False)
    return folder, base, base_seg, unbiased, biased


def _error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_template_of_shifted_copies_is_the_unshifted_shape(shifted_2d):
    folder, base, base_seg, unbiased, biased = shifted_2d
    first = normalise_intensity(io.load_volume(folder / "img" / "s0.nii.gz").data, "percentile")
    base_n = normalise_intensity(base, "percentile")
    # the update moves the template to the population's centre, the unshifted shape ...
    assert _error(unbiased.template.data, base_n) < 0.25 * _error(first, base_n)
    assert (unbiased.template_seg.data == base_seg).mean() > 0.97
    # ... which it is not without it: the template stays on the first subject (the reference)
    assert _error(biased.template.data, first) < 0.25 * _error(biased.template.data, base_n)
    assert (biased.template_seg.data == base_seg).mean() < 0.9


def test_mean_displacement_to_the_template_is_zero_only_with_the_update(shifted_2d):
    folder, _, _, unbiased, biased = shifted_2d
    for result, low in ((unbiased, True), (biased, False)):
        paths = TemplateDir(result.out)
        mean = np.mean([io.load_warp(paths.warp(name)).disp for name in result.subjects], axis=0)
        norm = float(np.linalg.norm(mean, axis=0).mean())
        assert (norm < 0.1) if low else (norm > 3.0), (low, norm)
    # an independent check: register each subject afresh to the final template; the mean displacement
    # (over the shape, away from the border) is the template's offset from the population's centre
    for result, bound in ((unbiased, lambda n: n < 0.6), (biased, lambda n: n > 3.0)):
        disps = []
        for i, image in enumerate(_inputs(folder)[0]):
            job_dir = result.out / "check"
            assert _job(f"s{i}", image, result.out / "template.nii.gz", job_dir).run().status == "done"
            disps.append(io.load_warp(job_dir / f"s{i}_warp.nii.gz").disp)
        mean = np.mean(disps, axis=0)[:, 8:-8, 8:-8]
        norm = float(np.linalg.norm(mean, axis=0).mean())
        assert bound(norm), norm


def _job(name, moving, fixed, folder):
    return PairJob(1, name, str(moving), str(fixed), OutputPaths(str(folder / f"{name}_moved.nii.gz"),
                                                                 str(folder / f"{name}_warp.nii.gz")),
                   RegistrationSpec(method="affine"))


def test_the_log_shows_the_bias_going_to_zero(shifted_2d):
    _, _, _, unbiased, _ = shifted_2d
    log = unbiased.log
    assert [row.iteration for row in log] == [0, 1]
    assert log[0].registration == "affine" and log[1].registration == "affine + dense"
    assert log[0].mean_disp_norm == pytest.approx(5.0, abs=0.3)  # the mean offset of the subjects from s0
    assert log[1].mean_disp_norm < 0.1 * log[0].mean_disp_norm
    with open(TemplateDir(unbiased.out).log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in rows] == [0, 1]
    assert float(rows[0]["mean_disp_norm"]) == pytest.approx(log[0].mean_disp_norm, rel=1e-4)


def test_outputs_are_on_the_first_images_grid(shifted_2d):
    folder, _, _, result, _ = shifted_2d
    paths = TemplateDir(result.out)
    first = nib.load(folder / "img" / "s0.nii.gz")
    for path in (paths.template, paths.template_seg, *(paths.logjac(n) for n in result.subjects)):
        image = nib.load(path)
        assert image.shape[:2] == first.shape[:2]
        np.testing.assert_allclose(image.affine, first.affine)
    assert np.issubdtype(nib.load(paths.template_seg).get_data_dtype(), np.integer)
    for name in result.subjects:
        warp = io.load_warp(paths.warp(name))
        assert warp.disp.shape == (2, 40, 48)
        np.testing.assert_allclose(warp.affine, first.affine)
        logjac = io.load_volume(paths.logjac(name)).data
        assert np.isfinite(logjac).all() and abs(float(logjac.mean())) < 0.05  # shifts: volume kept
    assert paths.qc_png.stat().st_size > 1000
    page = paths.qc_html.read_text()
    assert "mean_disp_norm" in page and "data:image/png;base64," in page
    assert not list(result.out.rglob(".*tmp*"))  # no temporary file left behind


def test_average_and_update_known_answer():
    # subjects seen through constant translations t_i: the mean is their mean, its inverse exactly -mean
    shape = (12, 14)
    moved = [np.full(shape, v, np.float32) for v in (0.2, 0.4, 0.9)]
    disps = [np.stack([np.full(shape, a, np.float32), np.full(shape, b, np.float32)])
             for a, b in ((1.0, -2.0), (2.0, 0.5), (0.0, 0.0))]
    update = average_and_update(moved, disps)
    np.testing.assert_allclose(update.mean_disp[0, :, 0, 0].numpy(), [1.0, -0.5], atol=1e-6)
    np.testing.assert_allclose(update.shift[0, :, 3, 3].numpy(), [-1.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(update.template, 0.5, atol=1e-6)
    still = average_and_update(moved, disps, unbiased=False)
    assert float(still.shift.abs().max()) == 0.0


def test_intensity_range_is_what_normalise_intensity_uses():
    x = np.random.default_rng(0).gamma(2.0, size=(20, 30))
    for method in ("minmax", "percentile"):
        np.testing.assert_array_equal(apply_range(x, *intensity_range(x, method)), normalise_intensity(x, method))


def test_runner_gets_picklable_jobs_and_3d_works(tmp_path):
    offsets = [(-2, 1, 1), (2, -1, -1), (0, 2, -2), (0, -2, 2)]
    base, _ = _population(tmp_path, (16, 20, 18), offsets, seed=3)
    images, segs = _inputs(tmp_path)
    calls = []

    def runner(jobs):
        calls.append(len(jobs))
        return run_in_process([pickle.loads(pickle.dumps(job)) for job in jobs])

    result = build_template(images, segs, tmp_path / "T", RegistrationSpec(method="dense", affine=True,
                                                                           iterations=(20, 10, 2)),
                            iterations=1, runner=runner)
    assert calls == [4, 4]
    assert result.template.shape == (16, 20, 18) and result.template_seg.shape == (16, 20, 18)
    np.testing.assert_allclose(nib.load(TemplateDir(result.out).template).affine, AFFINE)
    first = normalise_intensity(io.load_volume(images[0]).data, "percentile")
    base_n = normalise_intensity(base, "percentile")
    assert _error(result.template.data, base_n) < 0.5 * _error(first, base_n)
    assert io.load_warp(TemplateDir(result.out).warp("s3")).disp.shape == (3, 16, 20, 18)


def test_resume_keeps_finished_iterations(tmp_path):
    _population(tmp_path, (24, 28), [(-2, 1), (2, -1), (1, 2)])
    images, segs = _inputs(tmp_path)
    out = tmp_path / "T"
    first = build_template(images, None, out, FAST, iterations=1)
    paths = TemplateDir(out)
    stage0 = paths.stage_template(0).stat().st_mtime_ns
    paths.template.unlink()
    paths.stage_template(1).unlink()  # as if killed during iteration 1
    calls = []

    def runner(jobs):
        calls.append(len(jobs))
        return run_in_process(jobs)

    again = build_template(images, None, out, FAST, iterations=1, resume=True, runner=runner)
    assert paths.stage_template(0).stat().st_mtime_ns == stage0  # iteration 0 was not redone
    assert calls == [3]  # iteration 1's jobs were handed out again (and skipped: their files exist)
    np.testing.assert_allclose(again.template.data, first.template.data, atol=1e-6)
    with pytest.raises(ValueError, match=r"`out` '.*' already holds files .*pass `resume`"):
        build_template(images, None, out, FAST, iterations=1)
    with pytest.raises(ValueError, match=r"cannot resume .*its settings differ from this one.s \(segs\)"):
        build_template(images, segs, out, FAST, iterations=1, resume=True)


def test_cli_end_to_end(tmp_path, capsys):
    _population(tmp_path, (24, 28), [(-2, 1), (2, -1), (1, 2)])
    out = tmp_path / "T"
    code = main(["template", "--images", str(tmp_path / "img"), "--segs", str(tmp_path / "seg"), "--out", str(out),
                 "--iterations", "1", "--threads", "1", "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "template of 3 images" in captured.out
    assert "iteration 1 (affine + dense): mean displacement" in captured.err
    for name in ("template.nii.gz", "template_seg.nii.gz", "qc.html", "qc.png", "log.csv",
                 "subjects/s2_warp.nii.gz", "subjects/s2_logjac.nii.gz"):
        assert (out / name).is_file(), name
    assert main(["template", "--images", str(tmp_path / "img"), "--out", str(tmp_path / "T2"), "--iterations", "0",
                 "--quiet", "--method", "affine", "--workers", "1"]) == 0
    assert "iteration" not in capsys.readouterr().err
    assert not (tmp_path / "T2" / "template_seg.nii.gz").exists()


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_bad_iterations_are_usage_errors(value, tmp_path, capsys):
    assert main(["template", "--images", str(tmp_path), "--out", str(tmp_path / "T"), "--iterations", value]) == 2
    assert "--iterations" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_local_dask_workers(tmp_path, capsys):
    """The iterations' jobs go through the engine's local Dask cluster and give the in-process template."""
    _population(tmp_path, (24, 28), [(-2, 1), (2, -1), (1, 2)])
    common = ["template", "--images", str(tmp_path / "img"), "--iterations", "0", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "T1"), "--workers", "1", "--quiet"]) == 0
    assert main([*common, "--out", str(tmp_path / "T2"), "--workers", "2"]) == 0
    assert "2 worker processes" in capsys.readouterr().err
    one, two = (io.load_volume(tmp_path / t / "template.nii.gz").data for t in ("T1", "T2"))
    np.testing.assert_allclose(two, one, atol=1e-4)
