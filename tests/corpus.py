"""The bad-input corpus: good files, a tiny trained model, and every bad input the command line must
refuse with one line (exit code 1), with the pattern of that line.

Shared by ``tests/test_robustness.py`` (which checks each row) and
``benchmarks/robustness/bad_input_table.py`` (which writes ``docs/results/bad_inputs.md``).
``BAD_INPUTS`` rows are ``(name, argv_builder(folder), pattern)``; ``SECOND_ROUND`` is its tail.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import zipfile
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from morphreg.cli import main
from morphreg.data import synthetic_shapes
from morphreg.models import VxmDense

AFFINE = np.diag([1.5, 1.0, 1.0, 1.0])
AFFINE[:3, 3] = [-30, 20, 5]
TINY = ["--enc", "4", "4", "4", "4", "--dec", "4", "4", "4", "4", "4", "4"]
SHAPE = (32, 40)


def nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def build_corpus(d: Path) -> Path:
    """Good files, a trained tiny model, and the bad inputs, in folder ``d``."""
    images, labels = synthetic_shapes(8, SHAPE, n_labels=3, seed=2)
    (d / "img").mkdir()
    (d / "seg").mkdir()
    for i in range(8):
        nii(d / "img" / f"s{i}.nii.gz", images[i])
        nii(d / "seg" / f"s{i}.nii.gz", labels[i].astype(np.uint8))
    good = d / "img" / "s0.nii.gz"
    data = images[1]
    nii(d / "nan.nii.gz", np.where(data > 0.5, np.nan, data).astype(np.float32))
    nii(d / "inf.nii.gz", np.where(data > 0.5, np.inf, data).astype(np.float32))
    nii(d / "constant.nii.gz", np.full(SHAPE, 0.3, np.float32))
    nii(d / "vol3d.nii.gz", np.zeros((8, 8, 8), np.float32))
    nii(d / "vol4d.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    nii(d / "vol5d.nii.gz", np.zeros((8, 8, 8, 2, 3), np.float32))
    nii(d / "other_shape.nii.gz", np.zeros((30, 40), np.float32) + images[2][:30])
    nii(d / "float_seg.nii.gz", labels[0].astype(np.float32) + 0.25)
    np.save(d / "vec1d.npy", np.arange(10, dtype=np.float32))
    np.savez(d / "stack.npz", a=images[0], b=images[1])
    (d / "empty.nii.gz").write_bytes(b"")
    raw = good.read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 3])
    (d / "garbage.nii").write_bytes(os.urandom(600))
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(50))
    (d / "image.xyz").write_bytes(os.urandom(50))
    (d / "folder.nii.gz").mkdir()
    with gzip.open(d / "notnifti.nii.gz", "wb") as handle:
        handle.write(b"hello" * 100)
    run = d / "run"
    assert main(["train", "--data", str(d / "img"), "--steps", "2", "--no-progress", "--out", str(run), *TINY]) == 0
    VxmDense(3, enc=(4, 4, 4, 4), dec=(4,) * 6).save(d / "model3d.pt")
    ckpt = torch.load(run / "model.pt", weights_only=True)
    ckpt["config"]["enc"] = [8, 8, 8, 8]
    torch.save(ckpt, d / "wrong_shape.pt")
    torch.save({"weights": torch.zeros(3)}, d / "plain.pt")

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/morphreg_pwned",))

    torch.save({"format": "x", "payload": Exploit()}, d / "evil.pt")
    model_bytes = (run / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(model_bytes[: len(model_bytes) // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "pairs_nocols.csv").write_text("a,b\nx,y\n")
    (d / "pairs_empty.csv").write_text("")
    (d / "pairs_missing.csv").write_text(f"moving,fixed\n{d}/img/s0.nii.gz,{d}/img/nope.nii.gz\n")
    (d / "segs_few").mkdir()
    for i in range(3):
        nii(d / "segs_few" / f"s{i}.nii.gz", labels[i].astype(np.uint8))
    main(["register", "--model", str(run), "--moving", str(good), "--fixed", str(d / "img" / "s1.nii.gz"),
          "--moved", str(d / "moved_ok.nii.gz"), "--warp", str(d / "warp2d.nii.gz")])
    build_second_round(d, images, labels, run)
    build_third_round_template(d, images, labels)
    build_third_round(d, images, labels)
    return d


def _header_only(path: Path, shape: tuple[int, ...]) -> Path:
    """A NIfTI file (``.nii`` or ``.nii.gz``) whose header declares ``shape`` float32 but holds no data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["magic"] = b"n+1"  # one file: header, 4 bytes of extension flags, then the data
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _flip_until_crc_fails(good: bytes) -> bytes:
    """Flip one bit of the compressed data such that inflate still succeeds and only the CRC fails."""
    for offset in range(len(good) // 2, len(good) - 8):
        damaged = bytearray(good)
        damaged[offset] ^= 0x10
        try:
            gzip.decompress(bytes(damaged))
        except gzip.BadGzipFile as err:
            if "CRC" in str(err):
                return bytes(damaged)
        except Exception:  # noqa: BLE001 - an inflate error: try the next byte
            continue
    raise AssertionError("no single-bit flip gives a pure CRC error")


def build_second_round(d: Path, images: np.ndarray, labels: np.ndarray, run: Path) -> None:
    """The inputs of the second round of issue 9 (hostile sizes, geometry, labels, CSV, NaN, resume)."""
    img = d / "img"
    # degenerate geometry: written through the header, since nibabel refuses to build such an image
    singular = nib.Nifti1Image(images[3], None)
    singular.header.set_sform(np.array([[1.0, 2, 0, 0], [0.5, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), code=2)
    nib.save(singular, d / "singular.nii.gz")
    flat = nib.Nifti1Image(images[3][..., None], None)
    flat.header.set_sform(AFFINE @ np.diag([1.0, 1.0, 0.0, 1.0]), code=2)  # a 2D slice without thickness
    nib.save(flat, d / "zero_z.nii.gz")
    # hostile sizes: a header that claims 32 GB, one that claims 67 MB of missing data (.nii, .nii.gz)
    _header_only(d / "claims_32gb.nii.gz", (2000, 2000, 2000))
    _header_only(d / "claims_67mb.nii", (256, 256, 256))
    _header_only(d / "claims_67mb.nii.gz", (256, 256, 256))
    np.save(d / "claims.npy", np.zeros((4, 4), np.float32))
    raw = bytearray((d / "claims.npy").read_bytes())
    raw[: raw.index(b"}") + 1] = raw[: raw.index(b"}") + 1].replace(b"(4, 4)", b"(9999, 9999)")
    (d / "claims.npy").write_bytes(bytes(raw))
    # a flipped bit that only the gzip CRC notices
    (d / "crc.nii.gz").write_bytes(_flip_until_crc_fails((img / "s3.nii.gz").read_bytes()))
    # labels
    seg = labels[0].astype(np.float32)
    seg[0, 0] = 3e9
    nii(d / "seg_3e9.nii.gz", seg)
    neg = labels[0].astype(np.int16)
    neg[0, 0] = -1
    nii(d / "seg_negative.nii.gz", neg)
    nii(d / "zero_int.nii.gz", np.zeros(SHAPE, np.int16))
    big = images[4].astype(np.float64)
    big[0, 0] = 1e300
    np.save(d / "float64_huge.npy", big)
    pairs_rows = [f"{img}/s{i}.nii.gz,{img}/s{i + 1}.nii.gz,{d}/float_seg.nii.gz,{d}/seg/s{i + 1}.nii.gz"
                  for i in range(4)]
    (d / "pairs_floatseg.csv").write_text("moving,fixed,moving_seg,fixed_seg\n" + "\n".join(pairs_rows) + "\n")
    # CSV: a 200 KiB cell, UTF-16, NUL bytes; an evaluation whose --out holds its own --pairs
    (d / "pairs_hugecell.csv").write_text(f"moving,fixed\n{'x' * 200_000},{img}/s1.nii.gz\n")
    (d / "pairs_utf16.csv").write_bytes(f"moving,fixed\n{img}/s0.nii.gz,{img}/s1.nii.gz\n".encode("utf-16"))
    (d / "pairs_nul.csv").write_bytes(f"moving,fixed\n{img}/s0.nii.gz,{img}/s1\0.nii.gz\n".encode())
    for folder, name in (("evalout", "pairs.csv"), ("trainout", "metrics.csv")):
        (d / folder).mkdir()
        (d / folder / name).write_text(f"moving,fixed\n{img}/s0.nii.gz,{img}/s1.nii.gz\n")
    # checkpoints: int_steps beyond the bound, absurd widths, a zip bomb, NaN weights
    ckpt = torch.load(run / "model.pt", weights_only=True)
    torch.save({**ckpt, "config": {**ckpt["config"], "int_steps": 70}}, d / "int_steps70.pt")
    torch.save({**ckpt, "config": {**ckpt["config"], "enc": [5000] * 4}}, d / "wide.pt")
    torch.save({**ckpt, "state_dict": {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                       for k, v in ckpt["state_dict"].items()}}, d / "nan_weights.pt")
    buffer = BytesIO()
    torch.save({**ckpt, "metadata": {"padding": torch.zeros(2**23)}}, buffer)
    with zipfile.ZipFile(BytesIO(buffer.getvalue())) as src, \
            zipfile.ZipFile(d / "bomb.pt", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    # a warp whose header states two different units
    warp = nib.load(d / "warp2d.nii.gz")
    contradictory = nib.Nifti1Image(np.asarray(warp.dataobj), warp.affine, warp.header)
    contradictory.header["descrip"] = b"morphreg warp; units=voxel"
    contradictory.header["intent_name"] = b"units=mm"
    nib.save(contradictory, d / "warp_contradictory.nii.gz")
    (d / "two").mkdir()
    for i in range(2):
        nii(d / "two" / f"s{i}.nii.gz", images[i])


def register_argv(d: Path, moving: str = "img/s0.nii.gz", fixed: str = "img/s1.nii.gz", model: str = "run",
              *extra: str) -> list[str]:
    return ["register", "--model", str(d / model), "--moving", str(d / moving), "--fixed", str(d / fixed),
            "--moved", str(d / "out" / "moved.nii.gz"), *extra]


# (name, argv builder, pattern the single error line must match)
BAD_INPUTS = [
    ("missing file", lambda d: register_argv(d, moving="img/none.nii.gz"), r"file does not exist"),
    ("empty file", lambda d: register_argv(d, moving="empty.nii.gz"), r"file is empty"),
    ("truncated file", lambda d: register_argv(d, moving="truncated.nii.gz"), r"not a readable image \(truncated or corrupt\?\)"),
    ("corrupt file", lambda d: register_argv(d, moving="garbage.nii"), r"not a readable image \(truncated or corrupt\?\)"),
    ("gzip of non-NIfTI", lambda d: register_argv(d, moving="notnifti.nii.gz"), r"not a readable image \(truncated or corrupt\?\)"),
    ("unknown extension", lambda d: register_argv(d, moving="image.xyz"), r"unknown file extension; supported"),
    ("corrupt PNG (read by SimpleITK)", lambda d: register_argv(d, moving="image.png"), r"cannot read .*image\.png"),
    ("directory as image", lambda d: register_argv(d, moving="folder.nii.gz"), r"not a regular file"),
    ("NaN image", lambda d: register_argv(d, moving="nan.nii.gz"), r"NaN"),
    ("inf image", lambda d: register_argv(d, fixed="inf.nii.gz"), r"inf"),
    ("constant image", lambda d: register_argv(d, fixed="constant.nii.gz"), r"constant"),
    ("1D array", lambda d: register_argv(d, moving="vec1d.npy"), r"expected a 2D or 3D image.*got shape \(10,\)"),
    ("4D array", lambda d: register_argv(d, moving="vol4d.nii.gz"), r"expected a 2D or 3D image.*got shape \(8, 8, 8, 3\)"),
    ("5D array", lambda d: register_argv(d, moving="vol5d.nii.gz"), r"got shape \(8, 8, 8, 2, 3\).*use morphreg.io.load_warp"),
    ("2D vs 3D", lambda d: register_argv(d, moving="vol3d.nii.gz"), r"3D but --fixed"),
    ("different shape, --no-resample", lambda d: register_argv(d, "other_shape.nii.gz", "img/s1.nii.gz", "run",
                                                            "--no-resample"), r"different grids"),
    ("float label map", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--moving-seg",
                                            str(d / "float_seg.nii.gz")), r"integer label map"),
    ("npz without key", lambda d: register_argv(d, moving="stack.npz"), r"pass --npz-key one of"),
    ("3D model for 2D images", lambda d: register_argv(d, model="model3d.pt"), r"3D network"),
    ("checkpoint of another shape", lambda d: register_argv(d, model="wrong_shape.pt"), r"do not match"),
    ("not a morphreg checkpoint", lambda d: register_argv(d, model="plain.pt"), r"not a morphreg model"),
    ("pickle that runs code", lambda d: register_argv(d, model="evil.pt"), r"refused: it references code"),
    ("truncated checkpoint", lambda d: register_argv(d, model="truncated.pt"), r"not a readable"),
    ("empty checkpoint", lambda d: register_argv(d, model="empty.pt"), r"empty"),
    ("run dir without model", lambda d: register_argv(d, model="img"), r"does not exist"),
    ("--moved-seg without --moving-seg", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run",
                                                             "--moved-seg", str(d / "x.nii.gz")), r"--moving-seg"),
    ("warp of wrong dimension", lambda d: ["warp", "--moving", str(d / "vol3d.nii.gz"), "--warp",
                                           str(d / "warp2d.nii.gz"), "--moved", str(d / "out" / "moved.nii.gz")],
     r"3D but --warp"),
    ("image given as warp", lambda d: ["warp", "--moving", str(d / "img/s0.nii.gz"), "--warp",
                                       str(d / "img/s1.nii.gz"), "--moved", str(d / "out" / "moved.nii.gz")],
     r"does not state its units"),
    ("pairs CSV without columns", lambda d: ["evaluate", "--model", str(d / "run"), "--pairs",
                                             str(d / "pairs_nocols.csv"), "--out", str(d / "out" / "ev")],
     r"columns"),
    ("empty pairs CSV", lambda d: ["evaluate", "--model", str(d / "run"), "--pairs", str(d / "pairs_empty.csv"),
                                   "--out", str(d / "out" / "ev")], r"empty"),
    ("pairs CSV naming a missing file", lambda d: ["evaluate", "--model", str(d / "run"), "--pairs",
                                                   str(d / "pairs_missing.csv"), "--out", str(d / "out" / "ev")],
     r"does not exist"),
    ("segs count mismatch", lambda d: ["train", "--data", str(d / "img"), "--segs", str(d / "segs_few"),
                                       "--out", str(d / "out" / "r")], r"3 label maps but --data holds 8"),
    ("empty training folder", lambda d: ["train", "--data", str(d / "out" / "nothing"), "--out",
                                         str(d / "out" / "r")], r"does not exist|no image|empty"),
    ("output under a file", lambda d: ["register", "--model", str(d / "run"), "--moving", str(d / "img/s0.nii.gz"),
                                       "--fixed", str(d / "img/s1.nii.gz"), "--moved",
                                       str(d / "img/s2.nii.gz" / "moved.nii.gz")], r"is a file, not a folder"),
]


def _eval(d: Path, pairs: str, model: str = "run", *extra: str) -> list[str]:
    return ["evaluate", "--model", str(d / model), "--pairs", str(d / pairs), "--out", str(d / "out" / "ev"),
            "--no-progress", *extra]


def _train(d: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(d / "out" / "r"), "--steps", "2", "--no-progress", *TINY, *extra]


# Issue 9, "bad input, second round": each class of the report, with the line it must now give.
SECOND_ROUND = [
    # two outputs on one path, an output on an input
    ("--moved and --warp on one path", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--warp",
                                                           str(d / "out" / "moved.nii.gz")),
     r"--moved and --warp are the same file"),
    ("--moved-seg on --moved's path", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--moving-seg",
                                                          str(d / "seg/s0.nii.gz"), "--moved-seg",
                                                          str(d / "out" / "moved.nii.gz")),
     r"--moved and --moved-seg are the same file"),
    ("--moved on the --moving input", lambda d: ["register", "--model", str(d / "run"), "--moving",
                                                 str(d / "img/s0.nii.gz"), "--fixed", str(d / "img/s1.nii.gz"),
                                                 "--moved", str(d / "img/../img/s0.nii.gz")],
     r"--moved .* is the --moving input"),
    ("warp --moved on its --warp", lambda d: ["warp", "--moving", str(d / "img/s0.nii.gz"), "--warp",
                                              str(d / "warp2d.nii.gz"), "--moved", str(d / "warp2d.nii.gz")],
     r"--moved .* is the --warp input"),
    ("evaluate --out over its own --pairs", lambda d: ["evaluate", "--model", str(d / "run"), "--pairs",
                                                       str(d / "evalout/pairs.csv"), "--out", str(d / "evalout")],
     r"would overwrite the --pairs input"),
    ("train --out over its --pairs", lambda d: ["train", "--pairs", str(d / "trainout/metrics.csv"), "--out",
                                                str(d / "trainout")],
     r"--out \(its metrics.csv\) '.*trainout/metrics.csv' is the --pairs input"),
    # degenerate geometry
    ("singular affine", lambda d: register_argv(d, moving="singular.nii.gz"), r"singular.nii.gz'.*affine is singular"),
    ("2D image with zero z-scale", lambda d: register_argv(d, fixed="zero_z.nii.gz"),
     r"zero_z.nii.gz'.*affine is singular \(voxel sizes 1.5, 1, 0 mm\)"),
    # hostile sizes (refused from the header, before any allocation)
    ("header claims 32 GB", lambda d: register_argv(d, moving="claims_32gb.nii.gz"),
     r"declares 2000x2000x2000 voxels of float32 \(32 GB in memory\), more than"),
    ("header claims 67 MB, file holds none", lambda d: register_argv(d, moving="claims_67mb.nii"),
     r"declares 256x256x256 voxels of float32 \(67 MB\) but the file holds only 0 bytes of data"),
    ("gzip header claims 67 MB, holds none", lambda d: register_argv(d, moving="claims_67mb.nii.gz"),
     r"data end after 352 of the 67109216 bytes its header declares"),
    (".npy header claims 400 MB", lambda d: register_argv(d, moving="claims.npy"),
     r"declares 9999x9999 voxels of float32 \(400 MB\) but the file holds only 70 bytes of data"),
    ("checkpoint config with absurd widths", lambda d: register_argv(d, model="wide.pt"),
     r"config needs \(5000, 2, 3, 3\)"),
    ("checkpoint zip bomb", lambda d: register_argv(d, model="bomb.pt"), r"decompression bomb"),
    # a damaged .nii.gz
    ("gzip CRC error", lambda d: register_argv(d, moving="crc.nii.gz"), r"crc.nii.gz'.*damaged gzip data \(CRC check failed"),
    # labels: one policy for --moving-seg, --fixed-seg, --segs, --pairs, --atlas-seg
    ("label 3e9", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--moving-seg",
                                      str(d / "seg_3e9.nii.gz")),
     r"--moving-seg '.*seg_3e9.nii.gz' must be an integer label map .*values up to 3e\+09"),
    ("negative label", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--fixed-seg",
                                           str(d / "seg_negative.nii.gz")),
     r"--fixed-seg '.*seg_negative.nii.gz' .*negative values \(smallest -1\)"),
    ("label 1.25 via train --pairs", lambda d: _train(d, "--pairs", str(d / "pairs_floatseg.csv")),
     r"--pairs '.*pairs_floatseg.csv' line 2: moving_seg '.*float_seg.nii.gz' must be an integer label map"),
    ("label 1.25 via evaluate --pairs", lambda d: _eval(d, "pairs_floatseg.csv"),
     r"--pairs '.*pairs_floatseg.csv' line 2: moving_seg '.*float_seg.nii.gz' must be an integer label map"),
    ("label 1.25 via --atlas-seg", lambda d: _train(d, "--data", str(d / "img"), "--segs", str(d / "seg"),
                                                    "--atlas", str(d / "img/s0.nii.gz"), "--atlas-seg",
                                                    str(d / "float_seg.nii.gz")),
     r"--atlas-seg '.*float_seg.nii.gz' must be an integer label map .*non-integer values such as 0\.25"),
    # CSV
    ("pairs CSV with a 200 KiB cell", lambda d: _eval(d, "pairs_hugecell.csv"), r"line 2 is 2\d+ characters long"),
    ("UTF-16 pairs CSV", lambda d: _eval(d, "pairs_utf16.csv"), r"'.*pairs_utf16.csv' is not UTF-8 text \(it looks"),
    ("pairs CSV with a NUL byte", lambda d: _eval(d, "pairs_nul.csv"), r"'.*pairs_nul.csv' line 2 holds a NUL byte"),
    # --int-steps from a checkpoint
    ("checkpoint with int_steps 70", lambda d: register_argv(d, model="int_steps70.pt"),
     r"argument 'int_steps' must be an integer in \[0, 20\], got 70"),
    # NaN and divergence: stop before backward(), write nothing
    ("model with NaN weights", lambda d: register_argv(d, model="nan_weights.pt"), r"holds non-finite weights"),
    ("dense with --lambda 1e39", lambda d: ["register", "--method", "dense", "--lambda", "1e39", "--moving",
                                            str(d / "img/s0.nii.gz"), "--fixed", str(d / "img/s1.nii.gz"),
                                            "--moved", str(d / "out" / "moved.nii.gz")], r"diverged: its loss became nan at iteration 1 of 100 .*; lower --lambda$"),
    ("ffd with --lambda 1e39", lambda d: ["register", "--method", "ffd", "--lambda", "1e39", "--moving",
                                          str(d / "img/s0.nii.gz"), "--fixed", str(d / "img/s1.nii.gz"),
                                          "--moved", str(d / "out" / "moved.nii.gz")], r"diverged: its loss became nan at iteration 1 of 100 .*; lower --lambda$"),
    ("--optimize with --lambda 1e308", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--optimize",
                                                           "3", "--lambda", "1e308"), r"diverged: its loss became inf at iteration 1 of 3 .*; lower --lambda$"),
    # --resume with changed settings: refused, naming each; the run is untouched
    ("--resume with changed flags", lambda d: ["train", "--data", str(d / "img"), "--out", str(d / "run"), "--resume",
                                               "--steps", "4", "--no-progress", *TINY, "--lr", "0.01", "--loss",
                                               "mse", "--seed", "3"],
     r"cannot resume .*--loss 'ncc' -> 'mse'; --lambda 1\.0 -> 0\.01; --lr 0\.001 -> 0\.01; --seed 0 -> 3"),
    ("--resume with another --val-fraction", lambda d: ["train", "--data", str(d / "img"), "--out", str(d / "run"),
                                                        "--resume", "--steps", "4", "--no-progress", *TINY,
                                                        "--val-fraction", "0.5"],
     r"cannot resume .*--val-fraction 0\.2 -> 0\.5"),
    # MINOR
    ("--moved with an unknown extension", lambda d: [*register_argv(d)[:-1], str(d / "out" / "moved.png")],
     r"--moved: cannot write .*unknown file extension"),
    ("--warp as .npz", lambda d: register_argv(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--warp",
                                           str(d / "out" / "w.npz")), r"--warp: .*written as NIfTI"),
    ("all-zero integer image", lambda d: register_argv(d, fixed="zero_int.nii.gz"), r"constant image"),
    ("float64 beyond float32", lambda d: register_argv(d, moving="float64_huge.npy"),
     r"values reach 1e\+300, beyond the float32 range"),
    ("deformable network as --affine-model", lambda d: [*register_argv(d), "--affine-model", str(d / "run")],
     r"--affine-model .* holds a VxmDense"),
    ("--device cuda without CUDA", lambda d: [*register_argv(d), "--device", "cuda"],
     r"--device cuda: CUDA is not available"),
    ("two images, one left for training", lambda d: _train(d, "--data", str(d / "two")),
     r"holds 2 image\(s\); with --val-fraction 0\.2, 1 of them validate and 1 is left for training"),
    ("warp --npz-key with a NIfTI image", lambda d: ["warp", "--moving", str(d / "img/s0.nii.gz"), "--npz-key", "a",
                                                     "--warp", str(d / "warp2d.nii.gz"), "--moved",
                                                     str(d / "out" / "moved.nii.gz")],
     r"--npz-key only applies to .npz files, got 'a'"),
    ("register --npz-key without an .npz", lambda d: [*register_argv(d), "--npz-key", "a"],
     r"--npz-key 'a' selects an array of an .npz file, but neither image is an .npz"),
    ("contradictory warp units", lambda d: ["warp", "--moving", str(d / "img/s0.nii.gz"), "--warp",
                                            str(d / "warp_contradictory.nii.gz"), "--moved",
                                            str(d / "out" / "moved.nii.gz")], r"contradicts itself about the units"),
]
BAD_INPUTS += SECOND_ROUND


def build_third_round_template(d: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Folders of images for ``morphreg template`` (issue 19): empty, mixed 2D/3D, one NaN, ..."""
    folders = {name: d / f"tpl_{name}" for name in ("empty", "mixed", "nan", "one", "constant", "floatseg",
                                                    "segshape", "dupes")}
    for folder in folders.values():
        folder.mkdir()
    nii(folders["mixed"] / "a.nii.gz", images[0])
    nii(folders["mixed"] / "b.nii.gz", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    nii(folders["nan"] / "a.nii.gz", images[0])
    nii(folders["nan"] / "b.nii.gz", np.where(images[1] > 0.5, np.nan, images[1]).astype(np.float32))
    nii(folders["one"] / "a.nii.gz", images[0])
    nii(folders["constant"] / "a.nii.gz", images[0])
    nii(folders["constant"] / "b.nii.gz", np.full(SHAPE, 0.3, np.float32))
    nii(folders["floatseg"] / "a.nii.gz", labels[0].astype(np.uint8))
    nii(folders["floatseg"] / "b.nii.gz", labels[1].astype(np.float32) + 0.25)
    nii(folders["segshape"] / "a.nii.gz", labels[0][:30].astype(np.uint8))
    nii(folders["segshape"] / "b.nii.gz", labels[1][:30].astype(np.uint8))
    nii(folders["dupes"] / "s0.nii.gz", images[0])
    nii(folders["dupes"] / "s0.nii", images[1])


def _template(d: Path, images: str = "two", *extra: str) -> list[str]:
    return ["template", "--images", str(d / images), "--out", str(d / "out" / "T"), "--workers", "1", "--quiet",
            *extra]


# Issue 19, section 3: `morphreg template` refuses bad inputs with one line, before writing anything.
# (A read-only --out is not among them: the suite runs as root, whom permissions do not stop.)
THIRD_ROUND_TEMPLATE = [
    ("template: empty --images folder", lambda d: _template(d, "tpl_empty"), r"--images '.*tpl_empty' holds no image files"),
    ("template: --images not a folder", lambda d: _template(d, "img/s0.nii.gz"), r"--images '.*s0.nii.gz' is not a folder"),
    ("template: one image", lambda d: _template(d, "tpl_one"), r"--images holds 1 image\(s\); a template needs at least 2"),
    ("template: mixed 2D/3D", lambda d: _template(d, "tpl_mixed"),
     r"--images '.*tpl_mixed/b.nii.gz' is 3D but '.*a.nii.gz' is 2D; every image of a template must have the same"),
    ("template: NaN image", lambda d: _template(d, "tpl_nan"), r"tpl_nan/b.nii.gz.*NaN"),
    ("template: constant image", lambda d: _template(d, "tpl_constant"), r"--images '.*b.nii.gz' is a constant image"),
    ("template: two files, one name", lambda d: _template(d, "tpl_dupes"), r"have the same name 's0'"),
    ("template: segs count mismatch", lambda d: _template(d, "img", "--segs", str(d / "segs_few")),
     r"--segs holds 3 label maps but --images holds 8 images"),
    ("template: float label map", lambda d: _template(d, "two", "--segs", str(d / "tpl_floatseg")),
     r"--segs '.*tpl_floatseg/b.nii.gz' must be an integer label map"),
    ("template: label map on another grid", lambda d: _template(d, "two", "--segs", str(d / "tpl_segshape")),
     r"--segs '.*tpl_segshape/a.nii.gz' \(shape \(30, 40\)\) is not on the grid of its image"),
    ("template: --segs not a folder", lambda d: _template(d, "two", "--segs", str(d / "seg/s0.nii.gz")),
     r"--segs '.*s0.nii.gz' is not a folder"),
    ("template: --out holds other files", lambda d: [*_template(d)[:4], str(d / "evalout"), *_template(d)[5:]],
     r"--out '.*evalout' already holds files \(pairs.csv\); pass --resume to continue that build"),
    ("template: --resume in a folder of something else", lambda d: [*_template(d)[:4], str(d / "evalout"),
                                                                    *_template(d)[5:], "--resume"],
     r"--out '.*evalout' holds files but no settings.json of a template build; cannot resume it"),
    ("template: --out under a file", lambda d: [*_template(d)[:4], str(d / "img/s0.nii.gz/T"), *_template(d)[5:]],
     r"--out: cannot create .* is a file, not a folder"),
    ("template: 3D network for 2D images", lambda d: _template(d, "two", "--model", str(d / "model3d.pt")),
     r"--model is a 3D network but the images are 2D"),
    ("template: --model and --method", lambda d: _template(d, "two", "--model", str(d / "run"), "--method", "dense"),
     r"--method dense registers without a network; drop --model or --method"),
    ("template: --workers 0", lambda d: _template(d, "two", "--workers", "0"), r"--workers '0': expected auto or an"),
    ("template: --device cuda without CUDA", lambda d: _template(d, "two", "--device", "cuda"),
     r"--device cuda: CUDA is not available"),
]
BAD_INPUTS += THIRD_ROUND_TEMPLATE


# ---------------------------------------------------------------------------------------------
# Issue 18, "a third round, on what is new": initial transforms and ITK files, cohorts, segment,
# models, read-only outputs. Files live in ``d / "r3"``; the read-only folder is made last.


def _text_matrix(path: Path, matrix: np.ndarray, header: bool = True) -> Path:
    """A 4x4 text matrix; ``header``: with the first line of morphreg's own RAS files (detected as RAS)."""
    rows = "\n".join(" ".join(f"{v:.10g}" for v in row) for row in np.atleast_2d(matrix))
    path.write_text(("# 4x4 world (mm) matrix (RAS)\n" if header else "") + rows + "\n")
    return path


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


def make_read_only(folder: Path) -> bool:
    """Make ``folder`` refuse new files, even to root (``chattr +i``; else permission bits); whether it worked."""
    folder.chmod(0o555)
    if _writable(folder) and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    return not _writable(folder)


def release_corpus(d: Path) -> None:
    """Undo :func:`make_read_only`, so that the corpus folder can be deleted."""
    folder = d / "r3" / "readonly"
    if folder.exists() and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    if folder.exists():
        folder.chmod(0o755)


def read_only_works(d: Path) -> bool:
    """Whether the corpus' read-only folder refuses new files (the cases that need it are skipped otherwise)."""
    return not _writable(d / "r3" / "readonly")


def build_third_round(d: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import SimpleITK as sitk
    from nitransforms.linear import Affine

    from morphreg import io
    from morphreg.io.itk_warp import save_itk_warp

    r3 = d / "r3"
    r3.mkdir()
    eye = np.eye(4)
    # matrices: NaN, singular, projective, 10 m away, truncated, empty, headerless (FSL or RAS?)
    _text_matrix(r3 / "nan.txt", np.where(eye == 1, np.nan, 0.0))
    _text_matrix(r3 / "singular.txt", np.diag([1.0, 0.0, 1.0, 1.0]))
    _text_matrix(r3 / "projective.txt", np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.1, 0, 0, 1]]))
    far = eye.copy()
    far[0, 3] = 1e4
    _text_matrix(r3 / "far.txt", far)
    _text_matrix(r3 / "rows3.txt", eye[:3])
    (r3 / "empty.txt").write_text("")
    _text_matrix(r3 / "flirt.mat", eye, header=False)
    # ITK transforms: 2D for 3D images, truncated binary, unparsable parameters, a B-spline
    sitk.WriteTransform(sitk.AffineTransform(2), str(r3 / "itk2d.tfm"))
    sitk.WriteTransform(sitk.AffineTransform(2), str(r3 / "itk2d.mat"))
    raw = (r3 / "itk2d.mat").read_bytes()
    (r3 / "itk_truncated.mat").write_bytes(raw[: len(raw) // 2])
    text = (r3 / "itk2d.tfm").read_text()
    (r3 / "itk_nan.tfm").write_text(text.replace("Parameters: 1 0 0 1 0 0", "Parameters: nan 0 0 1 0 0"))
    bspline = sitk.BSplineTransform(2)
    bspline.SetTransformDomainMeshSize([2, 2])
    sitk.WriteTransform(bspline, str(r3 / "bspline.tfm"))
    # FreeSurfer LTA: truncated, NaN
    ref = nib.Nifti1Image(images[1][..., None], AFFINE)
    Affine(eye, reference=ref).to_filename(str(r3 / "ok.lta"), fmt="fs", moving=ref)
    lta = (r3 / "ok.lta").read_text()
    (r3 / "truncated.lta").write_text(lta[: len(lta) // 2])
    one = f"{1.0:.15e} {0.0:.15e} {0.0:.15e} {0.0:.15e}"
    assert one in lta
    (r3 / "nan.lta").write_text(lta.replace(one, "nan nan nan nan", 1))
    # 3D volumes (for a 2D transform)
    rng = np.random.default_rng(3)
    for name in ("vol_a", "vol_b"):
        nii(r3 / f"{name}.nii.gz", rng.random((10, 10, 10)).astype(np.float32))
    # displacement fields: ITK with NaN, a 32 GB claim, a singular affine; morphreg's voxel field 10^6 voxels away
    disp = np.zeros((2, *SHAPE), np.float32)
    disp[0] += 1.0
    save_itk_warp(disp, r3 / "itk.nii.gz", AFFINE)
    itk = nib.load(r3 / "itk.nii.gz")
    data = np.asarray(itk.dataobj).copy()
    data[0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, itk.affine, itk.header), r3 / "itk_nan.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(itk.dataobj) * 1e30, itk.affine, itk.header), r3 / "itk_1e30.nii.gz")
    singular = nib.Nifti1Image(np.asarray(itk.dataobj), None, itk.header)
    singular.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=2)
    singular.header.set_qform(None, code=0)
    nib.save(singular, r3 / "itk_singular.nii.gz")
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000, 1, 3))
    header.set_data_dtype(np.float32)
    header["magic"], header["vox_offset"] = b"n+1", 352
    header["descrip"] = b"ITK/ANTs displacement field; LPS mm; fixed->moving points"
    (r3 / "itk_claims_32gb.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    io.save_warp(disp, r3 / "voxel_warp.nii.gz", AFFINE)
    io.save_warp(disp * 1e6, r3 / "far_warp.nii.gz", AFFINE)
    save_itk_warp(np.zeros((3, 10, 10, 10), np.float32), r3 / "itk3d.nii.gz", AFFINE)
    # a coronal 2D slice (its axes leave the world x-y plane, where ITK reads 2D images)
    coronal = AFFINE.copy()
    coronal[:3, :3] = [[1.5, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]
    nii(r3 / "coronal_fixed.nii.gz", images[1], coronal)
    nii(r3 / "coronal_moving.nii.gz", images[0], coronal)
    build_third_round_cohort(d)
    seg = r3 / "seg"
    for name, files in {"two": ("a.nii.gz", "b.nii.gz"), "clash": ("a.nii.gz", "a.nii"),
                        "selfseg": ("x.nii.gz", "x_seg.nii.gz")}.items():
        (seg / name).mkdir(parents=True)
        for i, file in enumerate(files):
            nii(seg / name / file, images[4 + i])
    (seg / "atlasout").mkdir()
    nii(seg / "atlasout" / "a_seg.nii.gz", labels[0].astype(np.uint8))
    nii(r3 / "vol_seg.nii.gz", (rng.random((10, 10, 10)) * 3).astype(np.uint8))
    (r3 / "readonly").mkdir()
    make_read_only(r3 / "readonly")


BIG = 100_000  # rows of the large cohort CSVs


def build_third_round_cohort(d: Path) -> None:
    """CSVs and folders for ``register --pairs`` (each CSV in ``r3/coh``, next to two images)."""
    from morphreg.cli import build_parser
    from morphreg.cli.register import spec_from_args
    from morphreg.workflows.cohort import SETTINGS, cohort_settings
    from morphreg.workflows.outputs import OutputFormats
    from morphreg.workflows.run_folder import write_settings

    coh = d / "r3" / "coh"
    coh.mkdir()
    for name in ("a", "b"):
        shutil.copy(d / "img" / f"s{'ab'.index(name)}.nii.gz", coh / f"{name}.nii.gz")
    (coh / "header_only.csv").write_text("moving,fixed\n")
    (coh / "no_fixed.csv").write_text("moving,name\na.nii.gz,x\n")
    (coh / "one_name.csv").write_text("moving,fixed,name\na.nii.gz,b.nii.gz,x\nb.nii.gz,a.nii.gz,x\n")
    (coh / "long_name.csv").write_text(f"moving,fixed,name\na.nii.gz,b.nii.gz,{'n' * 250}\n")
    (coh / "output_is_input.csv").write_text(f"moving,fixed,name\na.nii.gz,b.nii.gz,x\n"
                                              f"{d}/out/c/x_moved.nii.gz,a.nii.gz,y\n")
    (coh / "elsewhere.csv").write_text("moving,fixed\n" + "".join(f"s{i}.nii.gz,s{i + 1}.nii.gz\n" for i in range(3)))
    rows = "".join(f"a.nii.gz,b.nii.gz,r{i}\n" for i in range(BIG))
    (coh / "big_one_name.csv").write_text("moving,fixed,name\n" + rows + "a.nii.gz,b.nii.gz,r7\n")
    (coh / "big_missing.csv").write_text("moving,fixed\n" + "".join(f"m{i}.nii.gz,b.nii.gz\n" for i in range(BIG)))
    (coh / "good.csv").write_text("moving,fixed\na.nii.gz,b.nii.gz\n")
    # a run of --method affine interrupted (killed) after its start: settings, all rows pending, a writer's temporary
    out = coh / "interrupted"
    args = build_parser().parse_args(["register", "--method", "affine", "--pairs", str(coh / "good.csv"),
                                      "--out", str(out)])
    formats = OutputFormats(args.warp_format, args.warp_units, args.matrix_format or "ras")
    write_settings(out, SETTINGS, cohort_settings(spec_from_args(args, "affine"), formats, matrix=True))
    (out / "cohort.csv").write_text("row,name,status,message,seconds,dice,peak_memory_mb,worker\n"
                                    "1,0001_a_to_b,pending,not finished when the run stopped,,,,\n")
    (out / ".0001_a_to_b_moved.1a2b3c4d.tmp.nii.gz").write_bytes(b"half")
    damaged = coh / "damaged"
    damaged.mkdir()
    (damaged / SETTINGS).write_text('{"registration": {"method": "aff')
    (damaged / "cohort.csv").write_text("row,name,status\n")


def _dense(d: Path, *extra: str, moving: str = "img/s0.nii.gz", fixed: str = "img/s1.nii.gz") -> list[str]:
    """``register --method dense`` (one level, two iterations) of two corpus images."""
    return ["register", "--method", "dense", "--levels", "1", "--iterations", "2", "--quiet", "--moving",
            str(d / moving), "--fixed", str(d / fixed), "--moved", str(d / "out" / "moved.nii.gz"), *extra]


def _init(d: Path, name: str, *extra: str, **images: str) -> list[str]:
    return _dense(d, "--init-matrix", str(d / "r3" / name), *extra, **images)


def _warp(d: Path, name: str, *extra: str) -> list[str]:
    return ["warp", "--moving", str(d / "img/s0.nii.gz"), "--warp", str(d / "r3" / name), "--moved",
            str(d / "out" / "moved.nii.gz"), *extra]


# Issue 18: --init-matrix, --init-warp, --warp-format itk and the detection of ITK/LTA/FSL files.
THIRD_ROUND_TRANSFORMS = [
    ("--init-matrix holding NaN", lambda d: _init(d, "nan.txt"),
     r"--init-matrix: '.*nan.txt' \(a 4x4 RAS text matrix\) holds NaN or infinite values$"),
    ("singular --init-matrix", lambda d: _init(d, "singular.txt"),
     r"--init-matrix: '.*singular.txt' \(a 4x4 RAS text matrix\) is singular \(its linear part has rank 2 of 3\)"),
    ("projective --init-matrix", lambda d: _init(d, "projective.txt"),
     r"'.*projective.txt' \(a 4x4 RAS text matrix\) is not an affine matrix: its last row is '0.1 0 0 1'"),
    ("--init-matrix 10 m away", lambda d: _init(d, "far.txt"),
     r"--init-matrix '.*far.txt' maps no voxel of the fixed grid inside the moving image"),
    ("--init-matrix cut to 3 rows", lambda d: _init(d, "rows3.txt", "--matrix-format", "ras"),
     r"'.*rows3.txt' \(a 4x4 RAS text matrix\) is not a 4x4 matrix: got shape \(3, 4\)"),
    ("empty --init-matrix", lambda d: _init(d, "empty.txt"),
     r"--init-matrix: cannot read '.*empty.txt' as a 4x4 RAS text matrix: file is empty \(0 bytes\)$"),
    ("FLIRT or RAS? a plain text .mat", lambda d: _init(d, "flirt.mat"),
     r"--init-matrix: '.*flirt.mat' is a plain text matrix, which FSL FLIRT writes .*say which with "
     r"--matrix-format fsl or ras$"),
    ("an image as --init-matrix", lambda d: _dense(d, "--init-matrix", str(d / "img/s2.nii.gz")),
     r"--init-matrix: cannot read '.*s2.nii.gz' as a 4x4 RAS text matrix: it holds binary data, not text"),
    ("a folder as --init-matrix", lambda d: _dense(d, "--init-matrix", str(d / "r3")),
     r"--init-matrix: cannot read '.*r3' as a 4x4 RAS text matrix: not a regular file$"),
    ("2D ITK transform for 3D images", lambda d: _init(d, "itk2d.tfm", moving="r3/vol_a.nii.gz",
                                                       fixed="r3/vol_b.nii.gz"),
     r"cannot read '.*itk2d.tfm' as an ITK transform: it holds a 2D transform but the images are 3D$"),
    ("truncated ITK .mat", lambda d: _init(d, "itk_truncated.mat"),
     r"cannot read '.*itk_truncated.mat' as an ITK transform: not a readable ITK transform file \(truncated or "
     r"corrupt\?\): Only vector parameters supported$"),
    ("ITK transform with a NaN parameter", lambda d: _init(d, "itk_nan.tfm"),
     r"'.*itk_nan.tfm' as an ITK transform: not a readable ITK transform file .*Error setting parameters"),
    ("B-spline ITK transform as --init-matrix", lambda d: _init(d, "bspline.tfm"),
     r"'.*bspline.tfm' as an ITK transform: it holds a BSplineTransform, not an affine transform$"),
    ("truncated LTA", lambda d: _init(d, "truncated.lta"),
     r"cannot read '.*truncated.lta' as a FreeSurfer LTA: the file is truncated or malformed \(IndexError"),
    ("LTA holding NaN", lambda d: _init(d, "nan.lta"),
     r"--init-matrix: '.*nan.lta' \(a FreeSurfer LTA\) holds NaN or infinite values"),
    ("morphreg field read as ITK", lambda d: _warp(d, "voxel_warp.nii.gz", "--warp-format", "itk"),
     r"--warp '.*voxel_warp.nii.gz' states that it is a morphreg field .*but --warp-format itk reads it as an "
     r"ITK/ANTs field"),
    ("ITK field holding NaN", lambda d: _warp(d, "itk_nan.nii.gz"),
     r"cannot use '.*itk_nan.nii.gz': the field contains NaN or inf$"),
    ("ITK field claiming 32 GB", lambda d: _warp(d, "itk_claims_32gb.nii.gz"),
     r"'.*itk_claims_32gb.nii.gz': its header declares 2000x2000x2000x1x3 voxels of float32 \(96 GB in memory\)"),
    ("ITK field with a singular affine", lambda d: _warp(d, "itk_singular.nii.gz"),
     r"'.*itk_singular.nii.gz': its voxel-to-world affine is singular"),
    ("a field 10^6 voxels long", lambda d: _warp(d, "far_warp.nii.gz"),
     r"--warp '.*far_warp.nii.gz' maps no voxel of the fixed grid inside the moving image"),
    ("--init-warp of 10^30 mm", lambda d: _dense(d, "--init-warp", str(d / "r3/itk_1e30.nii.gz")),
     r"--init-warp '.*itk_1e30.nii.gz' maps no voxel of the fixed grid inside the moving image"),
    ("3D --init-warp for 2D images", lambda d: _dense(d, "--init-warp", str(d / "r3/itk3d.nii.gz")),
     r"--init-warp '.*itk3d.nii.gz' \(grid \(10, 10, 10\)\) is not on the --fixed grid \(32, 40\)"),
    ("--init-warp given an LTA", lambda d: _dense(d, "--init-warp", str(d / "r3/ok.lta")),
     r"cannot handle '.*ok.lta': unknown file extension"),
    ("--init-matrix and --init-warp", lambda d: _init(d, "ok.lta", "--init-warp", str(d / "r3/itk.nii.gz")),
     r"give --init-matrix or --init-warp, not both$"),
    ("--warp-format itk on a coronal slice", lambda d: ["register", "--method", "affine", "--quiet", "--moving",
                                                        str(d / "r3/coronal_moving.nii.gz"), "--fixed",
                                                        str(d / "r3/coronal_fixed.nii.gz"), "--moved",
                                                        str(d / "out/moved.nii.gz"), "--warp",
                                                        str(d / "out/warp.nii.gz"), "--warp-format", "itk"],
     r"--warp-format/--matrix-format itk: the 2D --fixed slice's axes leave the world x-y plane"),
    ("--matrix named as an image", lambda d: ["register", "--method", "affine", "--quiet", "--moving",
                                              str(d / "img/s0.nii.gz"), "--fixed", str(d / "img/s1.nii.gz"),
                                              "--moved", str(d / "out/moved.nii.gz"), "--matrix",
                                              str(d / "out/affine.nii.gz")],
     r"--matrix: cannot write '.*affine.nii.gz': a matrix is a text or transform file .*not an image \(.nii.gz\)"),
]
BAD_INPUTS += THIRD_ROUND_TRANSFORMS



def _cohort(d: Path, csv_name: str, *extra: str, out: str = "out/c", method: str = "affine") -> list[str]:
    return ["register", "--method", method, "--pairs", str(d / "r3/coh" / csv_name), "--out", str(d / out),
            "--no-progress", *extra]


# Issue 18: `register --pairs` (the cohort engine): CSVs, names, schedulers, folders, interrupted runs.
THIRD_ROUND_COHORT = [
    ("cohort: CSV with a header only", lambda d: _cohort(d, "header_only.csv"),
     r"--pairs: pairs file '.*header_only.csv' has no rows$"),
    ("cohort: empty CSV", lambda d: [*_cohort(d, "x")[:4], str(d / "pairs_empty.csv"), *_cohort(d, "x")[5:]],
     r"--pairs: pairs file '.*pairs_empty.csv' is empty$"),
    ("cohort: no fixed column", lambda d: _cohort(d, "no_fixed.csv"),
     r"'.*no_fixed.csv' needs a header with columns moving,fixed.*found \['moving', 'name'\]$"),
    ("cohort: two rows, one name", lambda d: _cohort(d, "one_name.csv"),
     r"'.*one_name.csv' lines 2 and 3 both name their outputs 'x'; each row needs its own name$"),
    ("cohort: a row's output is another row's input", lambda d: _cohort(d, "output_is_input.csv"),
     r"row 1's output '.*out/c/x_moved.nii.gz' is the moving input of row 2; writing it would destroy the input"),
    ("cohort: a name beyond 255 bytes", lambda d: _cohort(d, "long_name.csv"),
     r"'.*long_name.csv' line 2: name 'n{40}\.\.\.' \(250 characters\) makes output names longer than the 255 "
     r"bytes"),
    ("cohort: paths relative to another folder", lambda d: _cohort(d, "elsewhere.csv"),
     r"'.*elsewhere.csv': none of its 3 row\(s\) names an existing moving and fixed image \(line 2: moving "
     r"'.*s0.nii.gz' does not exist\); paths are relative to the CSV's folder$"),
    (f"cohort: {BIG} rows, the last repeats a name", lambda d: _cohort(d, "big_one_name.csv"),
     rf"'.*big_one_name.csv' lines 9 and {BIG + 2} both name their outputs 'r7'"),
    (f"cohort: {BIG} rows, none of whose files exist", lambda d: _cohort(d, "big_missing.csv"),
     rf"'.*big_missing.csv': none of its {BIG} row\(s\) names an existing moving and fixed image"),
    ("cohort: UTF-16 CSV", lambda d: [*_cohort(d, "x")[:4], str(d / "pairs_utf16.csv"), *_cohort(d, "x")[5:]],
     r"--pairs: pairs file '.*pairs_utf16.csv' is not UTF-8 text \(it looks like UTF-16\)"),
    ("cohort: an image as --pairs", lambda d: [*_cohort(d, "x")[:4], str(d / "img/s0.nii.gz"), *_cohort(d, "x")[5:]],
     r"--pairs: pairs file '.*s0.nii.gz' is not UTF-8 text: byte 1 cannot be decoded"),
    ("cohort: a folder as --pairs", lambda d: [*_cohort(d, "x")[:4], str(d / "img"), *_cohort(d, "x")[5:]],
     r"--pairs: pairs file '.*img' is not a regular file$"),
    ("cohort: scheduler address without a port", lambda d: _cohort(d, "good.csv", "--scheduler", "not-a-host"),
     r"--scheduler 'not-a-host' is not a Dask scheduler address \(missing port number"),
    ("cohort: scheduler over http", lambda d: _cohort(d, "good.csv", "--scheduler", "http://127.0.0.1:8786"),
     r"--scheduler 'http://127.0.0.1:8786' is not a Dask scheduler address \(the http:// transport"),
    ("cohort: no scheduler listening", lambda d: _cohort(d, "good.csv", "--scheduler", "tcp://127.0.0.1:9",
                                                         "--scheduler-timeout", "0.5"),
     r"--scheduler 'tcp://127.0.0.1:9': cannot connect to a Dask scheduler within 0.5 s"),
    ("cohort: missing scheduler file", lambda d: _cohort(d, "good.csv", "--scheduler", str(d / "r3/sched.json")),
     r"--scheduler '.*sched.json': no such scheduler file"),
    ("cohort: --out holding other files", lambda d: _cohort(d, "good.csv", out="evalout"),
     r"--out '.*evalout' already holds files \(pairs.csv\); pass --resume to continue that run, or give a new"),
    ("cohort: --resume of a foreign folder", lambda d: _cohort(d, "good.csv", "--resume", out="evalout"),
     r"--out '.*evalout' holds files but no cohort.json of a cohort run \(register --pairs\); cannot resume it$"),
    ("cohort: --resume with another --method", lambda d: _cohort(d, "good.csv", "--resume",
                                                                 out="r3/coh/interrupted", method="rigid"),
     r"cannot resume the run in --out '.*interrupted': its settings differ from this one's \(registration.method "
     r"'affine' -> 'rigid'\); give the same"),
    ("cohort: --resume with another --warp-format", lambda d: _cohort(d, "good.csv", "--resume", "--warp-format",
                                                                      "itk", out="r3/coh/interrupted"),
     r"its settings differ from this one's \(outputs.warp_format 'morphreg' -> 'itk'\)"),
    ("cohort: --resume, damaged cohort.json", lambda d: _cohort(d, "good.csv", "--resume", out="r3/coh/damaged"),
     r"cannot resume the run in --out '.*damaged': its cohort.json is damaged \("),
    ("cohort: read-only --out", lambda d: _cohort(d, "good.csv", out="r3/readonly"),
     r"--out: cannot write in '.*readonly': folder '.*readonly' is not writable \(.+\)$"),
    ("register: --moved in a read-only folder", lambda d: [*register_argv(d)[:-1], str(d / "r3/readonly/m.nii.gz")],
     r"--moved: cannot write '.*readonly/m.nii.gz': folder '.*readonly' is not writable"),
    ("template: read-only --out", lambda d: [*_template(d)[:4], str(d / "r3/readonly/T"), *_template(d)[5:]],
     r"--out: cannot write in '.*readonly/T': folder '.*readonly' is not writable"),
    ("evaluate: read-only --out", lambda d: [*_eval(d, "pairs_floatseg.csv")[:6], str(d / "r3/readonly/ev"),
                                             "--no-progress"],
     r"--out: cannot write in '.*readonly/ev': folder '.*readonly' is not writable"),
]
BAD_INPUTS += THIRD_ROUND_COHORT



def _segment(d: Path, atlas: str = "img/s0.nii.gz", atlas_seg: str = "seg/s0.nii.gz", *extra: str,
             images: str = "r3/seg/two", out: str = "out/seg") -> list[str]:
    return ["segment", "--images", str(d / images), "--out", str(d / out), "--atlas", str(d / atlas),
            "--atlas-seg", str(d / atlas_seg), "--no-progress", *(extra or ("--method", "affine"))]


# Issue 18: `morphreg segment`: what every image shares (the atlases, the network) fails once, before any image;
# outputs that collide or overwrite an input.
THIRD_ROUND_SEGMENT = [
    ("segment: atlas labels on another grid", lambda d: _segment(d, atlas_seg="tpl_segshape/a.nii.gz"),
     r"--atlas-seg '.*tpl_segshape/a.nii.gz' \(shape \(30, 40\)\) is not on the grid of its image"),
    ("segment: missing atlas labels", lambda d: _segment(d, atlas_seg="seg/none.nii.gz"),
     r"cannot read '.*seg/none.nii.gz': file does not exist$"),
    ("segment: float atlas labels", lambda d: _segment(d, atlas_seg="float_seg.nii.gz"),
     r"--atlas-seg '.*float_seg.nii.gz' must be an integer label map .*non-integer values such as 0.25"),
    ("segment: an image as atlas labels", lambda d: _segment(d, atlas_seg="img/s1.nii.gz"),
     r"--atlas-seg '.*img/s1.nii.gz' must be an integer label map"),
    ("segment: constant atlas", lambda d: _segment(d, "constant.nii.gz"),
     r"--atlas '.*constant.nii.gz' is a constant image \(every voxel 0.3\)"),
    ("segment: 3D atlas, 2D images", lambda d: _segment(d, "r3/vol_a.nii.gz", "r3/vol_seg.nii.gz"),
     r"--atlas '.*vol_a.nii.gz' is 3D but the --images are 2D$"),
    ("segment: NaN atlas", lambda d: _segment(d, atlas="nan.nii.gz"), r"cannot use '.*nan.nii.gz': data contain \d+ NaN"),
    ("segment: 3D network for 2D atlases", lambda d: _segment(d, "img/s0.nii.gz", "seg/s0.nii.gz", "--model",
                                                               str(d / "model3d.pt")),
     r"--model is a 3D network but the images are 2D$"),
    ("segment: two images, one label map name", lambda d: _segment(d, images="r3/seg/clash"),
     r"--images '.*clash/a.nii(.gz)?' and '.*clash/a.nii(.gz)?' both give the label map 'a_seg.nii.gz'"),
    ("segment: a label map over an input image", lambda d: _segment(d, images="r3/seg/selfseg", out="r3/seg/selfseg"),
     r"the label map '.*selfseg/x_seg.nii.gz' would overwrite the input '.*selfseg/x_seg.nii.gz'; give --out another"),
    ("segment: a label map over the atlas labels", lambda d: _segment(d, "img/s0.nii.gz", "r3/seg/atlasout/a_seg.nii.gz",
                                                                      out="r3/seg/atlasout"),
     r"the label map '.*atlasout/a_seg.nii.gz' would overwrite the input '.*atlasout/a_seg.nii.gz'"),
    ("segment: two atlases, one label map", lambda d: [*_segment(d), "--atlas", str(d / "img/s1.nii.gz")],
     r"give one --atlas-seg per --atlas \(got 2 --atlas and 1 --atlas-seg\)$"),
    ("segment: read-only --out", lambda d: _segment(d, out="r3/readonly/seg"),
     r"--out: cannot write in '.*readonly/seg': folder '.*readonly' is not writable"),
]
BAD_INPUTS += THIRD_ROUND_SEGMENT


def _models(name: str) -> list[str]:
    return ["models", name]


# Issue 18: `morphreg models NAME` with odd names: one line that shows the name safely and lists the real ones.
THIRD_ROUND_MODELS = [
    ("models: unknown name", lambda d: _models("brain3d"), r"'brain3d' is not a built-in model \(built-in: brain2d, "),
    ("models: path traversal", lambda d: _models("../brain2d"), r"'../brain2d' is not a built-in model \(built-in: "),
    ("models: empty name", lambda d: _models(""), r"'' is not a built-in model"),
    ("models: 100000-character name", lambda d: _models("x" * 100_000),
     r"^morphreg models: error: 'x{100}\.\.\.' \(100000 characters\) is not a built-in model \(built-in: .{0,200}$"),
    ("models: unicode name", lambda d: _models("мозг2d"), r"'мозг2d' is not a built-in model"),
    ("models: a name with a newline", lambda d: _models("brain2d\nrm -rf"),
     r"'brain2d\\nrm -rf' is not a built-in model \(built-in: "),
    ("models: a checkpoint path", lambda d: _models(str(d / "run")),
     r"'.*/run' is a file or folder, not a built-in model name \(built-in: "),
]
BAD_INPUTS += THIRD_ROUND_MODELS

#: Cases that need a folder that refuses new files (skipped where none can be made).
NEEDS_READ_ONLY = {"segment: read-only --out", "evaluate: read-only --out", "cohort: read-only --out", "register: --moved in a read-only folder", "template: read-only --out"}


# ---------------------------------------------------------------------------------------------
# Issue 18: `morphreg.register` (the Python API) with arrays of any dtype or shape. A bad argument raises one
# exception of the expected type whose one-line message names the argument; odd but valid arrays (views,
# strides, tensors, other dtypes) give exactly the result of the plain float32 arrays.


def _image(d: Path, i: int) -> np.ndarray:
    return np.asarray(nib.load(d / "img" / f"s{i}.nii.gz").dataobj, dtype=np.float32)


def _api(d: Path, **kwargs: object) -> dict[str, object]:
    """``morphreg.register`` keyword arguments: the corpus' two images and tiny network, then ``kwargs``."""
    return {"moving": _image(d, 0), "fixed": _image(d, 1), "model": str(d / "run"), **kwargs}


def _with_nan(d: Path) -> np.ndarray:
    image = _image(d, 0)
    image[3, 4] = np.nan
    return image


# (name, kwargs builder, exception type, pattern of its message)
API_BAD_INPUTS = [
    ("complex image", lambda d: _api(d, moving=_image(d, 0).astype(np.complex64)), TypeError,
     r"^morphreg.register: argument 'moving' must hold real numbers .*got dtype complex64$"),
    ("object array", lambda d: _api(d, fixed=_image(d, 1).astype(object)), TypeError,
     r"argument 'fixed' must hold real numbers .*got dtype object$"),
    ("array of strings", lambda d: _api(d, moving=np.full(SHAPE, "a")), TypeError,
     r"argument 'moving' must hold real numbers .*got dtype <U1$"),
    ("nested list", lambda d: _api(d, moving=_image(d, 0).tolist()), TypeError,
     r"argument 'moving' must be a file path, a numpy array or a torch tensor, got list$"),
    ("ragged list", lambda d: _api(d, moving=[[1.0, 2.0], [1.0]]), TypeError,
     r"argument 'moving' must be a file path, a numpy array or a torch tensor, got list$"),
    ("dict", lambda d: _api(d, fixed={"data": _image(d, 1)}), TypeError,
     r"argument 'fixed' must be a file path, a numpy array or a torch tensor, got dict$"),
    ("None as moving", lambda d: _api(d, moving=None), TypeError, r"argument 'moving' is required"),
    ("masked array", lambda d: _api(d, moving=np.ma.masked_greater(_image(d, 0), 0.5)), TypeError,
     r"argument 'moving' is a masked array.*fill them first"),
    ("0-d array", lambda d: _api(d, moving=np.float32(1.0)), ValueError,
     r"argument 'moving' must be a 2D or 3D array, got shape \(\)$"),
    ("1-D array", lambda d: _api(d, moving=_image(d, 0).ravel()), ValueError,
     r"argument 'moving' must be a 2D or 3D array, got shape \(1280,\)$"),
    ("4-D array", lambda d: _api(d, fixed=_image(d, 1)[None, None]), ValueError,
     r"argument 'fixed' must be a 2D or 3D array, got shape \(1, 1, 32, 40\)$"),
    ("empty array", lambda d: _api(d, moving=np.zeros((0, 40), np.float32), fixed=np.zeros((0, 40), np.float32)),
     ValueError, r"argument 'moving' must not be empty, got shape \(0, 40\)$"),
    ("shapes differ", lambda d: _api(d, moving=_image(d, 0)[:30]), ValueError,
     r"the arrays must have one shape, got \{'moving': \(30, 40\), 'fixed': \(32, 40\)\}$"),
    ("NaN", lambda d: _api(d, moving=_with_nan(d)), ValueError,
     r"argument 'moving' holds 1 NaN and 0 infinite value\(s\)"),
    ("inf", lambda d: _api(d, fixed=np.where(_image(d, 1) > 0.5, np.inf, _image(d, 1))), ValueError,
     r"argument 'fixed' holds 0 NaN and \d+ infinite value\(s\)"),
    ("float64 beyond float32", lambda d: _api(d, moving=_image(d, 0).astype(np.float64) * 1e300), ValueError,
     r"argument 'moving' reaches 1e\+300, beyond the float32 range"),
    ("constant image", lambda d: _api(d, fixed=np.full(SHAPE, 0.3, np.float32)), ValueError,
     r"argument 'fixed' is a constant image \(every voxel 0.3\)"),
    ("3D arrays for a 2D network", lambda d: _api(d, moving=np.random.default_rng(0).random((8, 8, 8)),
                                                  fixed=np.random.default_rng(1).random((8, 8, 8))), ValueError,
     r"the model is 2D but the images are 3D$"),
    ("a path and an array", lambda d: _api(d, moving=str(d / "img/s0.nii.gz")), ValueError,
     r"give all inputs as arrays or all as paths \(moving is a path, the others arrays\)$"),
    ("float label map", lambda d: _api(d, moving_seg=np.full(SHAPE, 1.5)), ValueError,
     r"argument 'moving_seg' must be an integer label map .*non-integer values such as 1.5"),
    ("complex label map", lambda d: _api(d, fixed_seg=np.ones(SHAPE, np.complex64)), TypeError,
     r"argument 'fixed_seg' must hold real numbers .*complex64$"),
    ("label map of another shape", lambda d: _api(d, moving_seg=np.ones((30, 40), np.uint8)), ValueError,
     r"the arrays must have one shape, got .*'moving_seg': \(30, 40\)"),
    ("model of a wrong type", lambda d: _api(d, model=3), TypeError,
     r"argument 'model' must be a built-in name, a run folder or checkpoint path, or a loaded morphreg network, "
     r"got int$"),
    ("unknown method", lambda d: _api(d, model=None, method="demons"), ValueError,
     r"argument 'method' must be one of affine, rigid, dense, ffd \(or None for a network\), got 'demons'$"),
    ("unknown device", lambda d: _api(d, device="tpu"), ValueError,
     r"argument 'device' must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'$"),
    ("missing file", lambda d: _api(d, moving=str(d / "img/none.nii.gz"), fixed=str(d / "img/s1.nii.gz")),
     ValueError, r"cannot read '.*none.nii.gz': file does not exist$"),
]


def _strided(d: Path) -> np.ndarray:
    big = np.zeros((64, 80), np.float32)
    big[::2, ::2] = _image(d, 0)
    return big[::2, ::2]


# (name, kwargs builder, reference kwargs builder): both must give the same moved image and field
API_ODD_INPUTS = [
    ("negative strides", lambda d: _api(d, moving=_image(d, 0)[::-1, ::-1]),
     lambda d: _api(d, moving=np.ascontiguousarray(_image(d, 0)[::-1, ::-1]))),
    ("a strided view", lambda d: _api(d, moving=_strided(d)), lambda d: _api(d)),
    ("Fortran order", lambda d: _api(d, moving=np.asfortranarray(_image(d, 0))), lambda d: _api(d)),
    ("torch tensors", lambda d: _api(d, moving=torch.from_numpy(_image(d, 0)), fixed=torch.from_numpy(_image(d, 1))),
     lambda d: _api(d)),
    ("a tensor that requires grad", lambda d: _api(d, moving=torch.from_numpy(_image(d, 0)).requires_grad_()),
     lambda d: _api(d)),
    ("float64", lambda d: _api(d, moving=_image(d, 0).astype(np.float64)), lambda d: _api(d)),
    ("float16", lambda d: _api(d, moving=_image(d, 0).astype(np.float16)),
     lambda d: _api(d, moving=_image(d, 0).astype(np.float16).astype(np.float32))),
    ("boolean image", lambda d: _api(d, moving=_image(d, 0) > 0.5),
     lambda d: _api(d, moving=(_image(d, 0) > 0.5).astype(np.float32))),
    ("int64 near 2**62", lambda d: _api(d, moving=(_image(d, 0) * 2**62).astype(np.int64)),
     lambda d: _api(d, moving=(_image(d, 0) * 2**62).astype(np.int64).astype(np.float64))),
    ("uint16 image", lambda d: _api(d, moving=(_image(d, 0) * 60000).astype(np.uint16)),
     lambda d: _api(d, moving=(_image(d, 0) * 60000).astype(np.uint16).astype(np.float32))),
    ("boolean label maps", lambda d: _api(d, moving_seg=_image(d, 0) > 0.5, fixed_seg=_image(d, 1) > 0.5),
     lambda d: _api(d, moving_seg=(_image(d, 0) > 0.5).astype(np.uint8),
                    fixed_seg=(_image(d, 1) > 0.5).astype(np.uint8))),
]
