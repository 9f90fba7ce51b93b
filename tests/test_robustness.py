"""Hard to break: a corpus of bad inputs through the CLI, crash-safe resume, determinism, DDP."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg.cli import main
from morphreg.data import synthetic_shapes
from morphreg.models import VxmDense

AFFINE = np.diag([1.5, 1.0, 1.0, 1.0])
AFFINE[:3, 3] = [-30, 20, 5]
TINY = ["--enc", "4", "4", "4", "4", "--dec", "4", "4", "4", "4", "4", "4"]
SHAPE = (32, 40)


def _nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def build_corpus(d: Path) -> Path:
    """Good files, a trained tiny model, and the bad inputs, in folder ``d``."""
    images, labels = synthetic_shapes(8, SHAPE, n_labels=3, seed=2)
    (d / "img").mkdir()
    (d / "seg").mkdir()
    for i in range(8):
        _nii(d / "img" / f"s{i}.nii.gz", images[i])
        _nii(d / "seg" / f"s{i}.nii.gz", labels[i].astype(np.uint8))
    good = d / "img" / "s0.nii.gz"
    data = images[1]
    _nii(d / "nan.nii.gz", np.where(data > 0.5, np.nan, data).astype(np.float32))
    _nii(d / "inf.nii.gz", np.where(data > 0.5, np.inf, data).astype(np.float32))
    _nii(d / "constant.nii.gz", np.full(SHAPE, 0.3, np.float32))
    _nii(d / "vol3d.nii.gz", np.zeros((8, 8, 8), np.float32))
    _nii(d / "vol4d.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    _nii(d / "vol5d.nii.gz", np.zeros((8, 8, 8, 2, 3), np.float32))
    _nii(d / "other_shape.nii.gz", np.zeros((30, 40), np.float32) + images[2][:30])
    _nii(d / "float_seg.nii.gz", labels[0].astype(np.float32) + 0.25)
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
        _nii(d / "segs_few" / f"s{i}.nii.gz", labels[i].astype(np.uint8))
    main(["register", "--model", str(run), "--moving", str(good), "--fixed", str(d / "img" / "s1.nii.gz"),
          "--moved", str(d / "moved_ok.nii.gz"), "--warp", str(d / "warp2d.nii.gz")])
    build_second_round(d, images, labels, run)
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
    _nii(d / "seg_3e9.nii.gz", seg)
    neg = labels[0].astype(np.int16)
    neg[0, 0] = -1
    _nii(d / "seg_negative.nii.gz", neg)
    _nii(d / "zero_int.nii.gz", np.zeros(SHAPE, np.int16))
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
        _nii(d / "two" / f"s{i}.nii.gz", images[i])


def _register(d: Path, moving: str = "img/s0.nii.gz", fixed: str = "img/s1.nii.gz", model: str = "run",
              *extra: str) -> list[str]:
    return ["register", "--model", str(d / model), "--moving", str(d / moving), "--fixed", str(d / fixed),
            "--moved", str(d / "out" / "moved.nii.gz"), *extra]


# (name, argv builder, pattern the single error line must match)
BAD_INPUTS = [
    ("missing file", lambda d: _register(d, moving="img/none.nii.gz"), r"file does not exist"),
    ("empty file", lambda d: _register(d, moving="empty.nii.gz"), r"file is empty"),
    ("truncated file", lambda d: _register(d, moving="truncated.nii.gz"), r"not a readable image \(truncated or corrupt\?\)"),
    ("corrupt file", lambda d: _register(d, moving="garbage.nii"), r"not a readable image \(truncated or corrupt\?\)"),
    ("gzip of non-NIfTI", lambda d: _register(d, moving="notnifti.nii.gz"), r"not a readable image \(truncated or corrupt\?\)"),
    ("unknown extension", lambda d: _register(d, moving="image.xyz"), r"unknown file extension; supported"),
    ("corrupt PNG (read by SimpleITK)", lambda d: _register(d, moving="image.png"), r"cannot read .*image\.png"),
    ("directory as image", lambda d: _register(d, moving="folder.nii.gz"), r"not a regular file"),
    ("NaN image", lambda d: _register(d, moving="nan.nii.gz"), r"NaN"),
    ("inf image", lambda d: _register(d, fixed="inf.nii.gz"), r"inf"),
    ("constant image", lambda d: _register(d, fixed="constant.nii.gz"), r"constant"),
    ("1D array", lambda d: _register(d, moving="vec1d.npy"), r"expected a 2D or 3D image.*got shape \(10,\)"),
    ("4D array", lambda d: _register(d, moving="vol4d.nii.gz"), r"expected a 2D or 3D image.*got shape \(8, 8, 8, 3\)"),
    ("5D array", lambda d: _register(d, moving="vol5d.nii.gz"), r"got shape \(8, 8, 8, 2, 3\).*use morphreg.io.load_warp"),
    ("2D vs 3D", lambda d: _register(d, moving="vol3d.nii.gz"), r"3D but --fixed"),
    ("different shape, --no-resample", lambda d: _register(d, "other_shape.nii.gz", "img/s1.nii.gz", "run",
                                                            "--no-resample"), r"different grids"),
    ("float label map", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--moving-seg",
                                            str(d / "float_seg.nii.gz")), r"integer label map"),
    ("npz without key", lambda d: _register(d, moving="stack.npz"), r"pass --npz-key one of"),
    ("3D model for 2D images", lambda d: _register(d, model="model3d.pt"), r"3D network"),
    ("checkpoint of another shape", lambda d: _register(d, model="wrong_shape.pt"), r"do not match"),
    ("not a morphreg checkpoint", lambda d: _register(d, model="plain.pt"), r"not a morphreg model"),
    ("pickle that runs code", lambda d: _register(d, model="evil.pt"), r"refused: it references code"),
    ("truncated checkpoint", lambda d: _register(d, model="truncated.pt"), r"not a readable"),
    ("empty checkpoint", lambda d: _register(d, model="empty.pt"), r"empty"),
    ("run dir without model", lambda d: _register(d, model="img"), r"does not exist"),
    ("--moved-seg without --moving-seg", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run",
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
    ("--moved and --warp on one path", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--warp",
                                                           str(d / "out" / "moved.nii.gz")),
     r"--moved and --warp are the same file"),
    ("--moved-seg on --moved's path", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--moving-seg",
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
    ("singular affine", lambda d: _register(d, moving="singular.nii.gz"), r"singular.nii.gz'.*affine is singular"),
    ("2D image with zero z-scale", lambda d: _register(d, fixed="zero_z.nii.gz"),
     r"zero_z.nii.gz'.*affine is singular \(voxel sizes 1.5, 1, 0 mm\)"),
    # hostile sizes (refused from the header, before any allocation)
    ("header claims 32 GB", lambda d: _register(d, moving="claims_32gb.nii.gz"),
     r"declares 2000x2000x2000 voxels of float32 \(32 GB in memory\), more than"),
    ("header claims 67 MB, file holds none", lambda d: _register(d, moving="claims_67mb.nii"),
     r"declares 256x256x256 voxels of float32 \(67 MB\) but the file holds only 0 bytes of data"),
    ("gzip header claims 67 MB, holds none", lambda d: _register(d, moving="claims_67mb.nii.gz"),
     r"data end after 352 of the 67109216 bytes its header declares"),
    (".npy header claims 400 MB", lambda d: _register(d, moving="claims.npy"),
     r"declares 9999x9999 voxels of float32 \(400 MB\) but the file holds only 70 bytes of data"),
    ("checkpoint config with absurd widths", lambda d: _register(d, model="wide.pt"),
     r"config needs \(5000, 2, 3, 3\)"),
    ("checkpoint zip bomb", lambda d: _register(d, model="bomb.pt"), r"decompression bomb"),
    # a damaged .nii.gz
    ("gzip CRC error", lambda d: _register(d, moving="crc.nii.gz"), r"crc.nii.gz'.*damaged gzip data \(CRC check failed"),
    # labels: one policy for --moving-seg, --fixed-seg, --segs, --pairs, --atlas-seg
    ("label 3e9", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--moving-seg",
                                      str(d / "seg_3e9.nii.gz")),
     r"--moving-seg '.*seg_3e9.nii.gz' must be an integer label map .*values up to 3e\+09"),
    ("negative label", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--fixed-seg",
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
    ("checkpoint with int_steps 70", lambda d: _register(d, model="int_steps70.pt"),
     r"argument 'int_steps' must be an integer in \[0, 20\], got 70"),
    # NaN and divergence: stop before backward(), write nothing
    ("model with NaN weights", lambda d: _register(d, model="nan_weights.pt"), r"holds non-finite weights"),
    ("dense with --lambda 1e39", lambda d: ["register", "--method", "dense", "--lambda", "1e39", "--moving",
                                            str(d / "img/s0.nii.gz"), "--fixed", str(d / "img/s1.nii.gz"),
                                            "--moved", str(d / "out" / "moved.nii.gz")], r"diverged: its loss became nan at iteration 1 of 100 .*; lower --lambda$"),
    ("ffd with --lambda 1e39", lambda d: ["register", "--method", "ffd", "--lambda", "1e39", "--moving",
                                          str(d / "img/s0.nii.gz"), "--fixed", str(d / "img/s1.nii.gz"),
                                          "--moved", str(d / "out" / "moved.nii.gz")], r"diverged: its loss became nan at iteration 1 of 100 .*; lower --lambda$"),
    ("--optimize with --lambda 1e308", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--optimize",
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
    ("--moved with an unknown extension", lambda d: [*_register(d)[:-1], str(d / "out" / "moved.png")],
     r"--moved: cannot write .*unknown file extension"),
    ("--warp as .npz", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--warp",
                                           str(d / "out" / "w.npz")), r"--warp: .*written as NIfTI"),
    ("all-zero integer image", lambda d: _register(d, fixed="zero_int.nii.gz"), r"constant image"),
    ("float64 beyond float32", lambda d: _register(d, moving="float64_huge.npy"),
     r"values reach 1e\+300, beyond the float32 range"),
    ("deformable network as --affine-model", lambda d: [*_register(d), "--affine-model", str(d / "run")],
     r"--affine-model .* holds a VxmDense"),
    ("--device cuda without CUDA", lambda d: [*_register(d), "--device", "cuda"],
     r"--device cuda: CUDA is not available"),
    ("two images, one left for training", lambda d: _train(d, "--data", str(d / "two")),
     r"holds 2 image\(s\); with --val-fraction 0\.2, 1 of them validate and 1 is left for training"),
    ("warp --npz-key with a NIfTI image", lambda d: ["warp", "--moving", str(d / "img/s0.nii.gz"), "--npz-key", "a",
                                                     "--warp", str(d / "warp2d.nii.gz"), "--moved",
                                                     str(d / "out" / "moved.nii.gz")],
     r"--npz-key only applies to .npz files, got 'a'"),
    ("register --npz-key without an .npz", lambda d: [*_register(d), "--npz-key", "a"],
     r"--npz-key 'a' selects an array of an .npz file, but neither image is an .npz"),
    ("contradictory warp units", lambda d: ["warp", "--moving", str(d / "img/s0.nii.gz"), "--warp",
                                            str(d / "warp_contradictory.nii.gz"), "--moved",
                                            str(d / "out" / "moved.nii.gz")], r"contradicts itself about the units"),
]
BAD_INPUTS += SECOND_ROUND


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` with its size and content hash (folders too)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
            if p.is_file() else (-1, "folder") for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(("name", "build", "pattern"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line(name, build, pattern, corpus, capsys):
    out = corpus / "out"
    out.mkdir(exist_ok=True)
    before = _snapshot(corpus)
    code = main(build(corpus))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, (name, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert re.search(pattern, err[0]), err[0]
    assert _snapshot(corpus) == before  # nothing written or changed, not even half a file or an empty folder
    assert not Path("/tmp/morphreg_pwned").exists()


@pytest.mark.parametrize(
    "argv",
    [["train", "--data", "x", "--out", "y", "--loss", "ssd"], ["register", "--bogus-flag"],
     ["train", "--data", "x", "--out", "y", "--steps", "-3"], ["warp", "--interp", "cubic"]],
)
def test_unknown_flags_and_values_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_debug_shows_the_traceback(corpus, capsys):
    assert main([*_register(corpus, moving="empty.nii.gz"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def _train_cmd(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--loss", "ncc", "--lr", "1e-3", "--steps", str(steps),
            "--val-every", "5", "--checkpoint-every", "5", "--seed", "7", "--no-progress", "--threads", "1",
            "--out", str(out), *TINY, *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_deterministic_runs_are_bit_identical(corpus, tmp_path):
    for name in ("a", "b"):
        assert main(_train_cmd(corpus / "img", tmp_path / name, 6, "--deterministic")) == 0
    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "metrics.csv").read_text().split("\n")[1:] != []
    rows_a = [r.split(",")[:6] for r in (tmp_path / "a" / "metrics.csv").read_text().splitlines()]
    rows_b = [r.split(",")[:6] for r in (tmp_path / "b" / "metrics.csv").read_text().splitlines()]
    assert rows_a == rows_b


def test_sigkill_then_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    steps = 40
    assert main(_train_cmd(corpus / "img", tmp_path / "clean", steps, "--deterministic")) == 0
    cmd = [sys.executable, "-m", "morphreg.cli", *_train_cmd(corpus / "img", tmp_path / "killed", steps,
                                                             "--deterministic")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["step"] >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 10 <= killed_at < steps
    split = (tmp_path / "killed" / "split.json").read_bytes()  # written when the run began
    assert main(_train_cmd(corpus / "img", tmp_path / "killed", steps, "--deterministic", "--resume")) == 0
    assert (tmp_path / "killed" / "split.json").read_bytes() == split  # a run's split is never rewritten
    clean, resumed = _weights(tmp_path / "clean" / "last.pt"), _weights(tmp_path / "killed" / "last.pt")
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)
    clean_rows = (tmp_path / "clean" / "metrics.csv").read_text().splitlines()
    resumed_rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (drop wall time)
    assert strip(clean_rows) == strip(resumed_rows)


def test_ddp_two_processes_match_one_process_at_the_same_global_batch(corpus, tmp_path):
    steps = 6
    single = _train_cmd(corpus / "img", tmp_path / "single", steps, "--batch-size", "2")
    assert main(single) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "morphreg.cli", *_train_cmd(corpus / "img", tmp_path / "ddp", steps, "--batch-size", "1")]
    result = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = _weights(tmp_path / "single" / "last.pt"), _weights(tmp_path / "ddp" / "last.pt")
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"DDP check: max |weight difference| after {steps} steps = {worst:.3g}")
    assert worst < 1e-5, worst
    loss_one = [float(r.split(",")[1]) for r in (tmp_path / "single" / "metrics.csv").read_text().splitlines()[1:]]
    loss_two = [float(r.split(",")[1]) for r in (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()[1:]]
    print(f"DDP check: losses 1 process {loss_one}, 2 processes {loss_two}")
    assert np.allclose(loss_one, loss_two, rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "ddp" / "train.log.1").exists()


def test_batch_evaluation_splits_pairs_across_ranks(corpus, tmp_path):
    pairs = tmp_path / "pairs.csv"
    lines = ["moving,fixed,moving_seg,fixed_seg"]
    for i in range(5):
        lines.append(f"{corpus}/img/s{i}.nii.gz,{corpus}/img/s{i + 1}.nii.gz,{corpus}/seg/s{i}.nii.gz,"
                     f"{corpus}/seg/s{i + 1}.nii.gz")
    pairs.write_text("\n".join(lines) + "\n")
    common = ["evaluate", "--model", str(corpus / "run"), "--pairs", str(pairs), "--figures", "0", "--no-hd95",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "morphreg.cli", *common, "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    drop_time = lambda path: [r.rsplit(",", 1)[0] for r in path.read_text().splitlines()]  # noqa: E731
    one, two = drop_time(tmp_path / "one" / "pairs.csv"), drop_time(tmp_path / "two" / "pairs.csv")
    assert len(one) == 6 and one == two


# ---------------------------------------------------------------------------------------------
# Issue 9, second round: the classes that are not a single refused command


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(("steps", "lr", "pattern"), [
    ("4", "1e30", r"the loss became (nan|inf|-inf) at step 2: training diverged; nothing was saved"),
    ("4", "1e6", r"the loss became (nan|inf|-inf) at step \d: training diverged; nothing was saved"),
    ("1", "1e30", r"the field the network predicts became NaN or infinite by step 1: training diverged"),
])
def test_diverging_training_stops_before_backward_and_saves_no_model(steps, lr, pattern, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(corpus / "img"), "--steps", steps, "--lr", lr, "--no-progress", "--out", str(out),
            *TINY]
    assert main(argv) == 1
    line = _one_line(capsys)
    assert re.search(pattern, line), line
    assert not any((out / name).exists() for name in ("model.pt", "last.pt", "state.pt"))


def test_an_image_over_the_memory_budget_is_refused_from_its_header(corpus, monkeypatch, capsys):
    monkeypatch.setenv("MORPHREG_MEMORY_LIMIT", "32K")  # one image may take 4 kB as float32; these need 5.1 kB
    assert main(_register(corpus)) == 1
    line = _one_line(capsys)
    assert re.search(r"s0.nii.gz': its header declares 32x40 voxels of float32 \(5.1 kB in memory\), more than "
                     r"the 4.1 kB one input may take \(1/8 of the memory limit 33 kB \(MORPHREG_MEMORY_LIMIT\)\)",
                     line), line


@pytest.mark.parametrize("name", ["claims_32gb.nii.gz", "claims_67mb.nii.gz", "claims_67mb.nii", "claims.npy"])
def test_size_claims_are_refused_without_allocating_them(corpus, name):
    import tracemalloc

    from morphreg import io

    tracemalloc.start()
    try:
        with pytest.raises(io.ImageReadError, match="declares"):
            io.load_volume(corpus / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # the claims are 67 MB to 32 GB; nothing of that size was allocated


def test_a_zip_bomb_npz_is_refused_by_its_declared_sizes(tmp_path, monkeypatch):
    from morphreg import io

    np.savez_compressed(tmp_path / "bomb.npz", vol=np.zeros((512, 512, 64), np.float32))  # 64 MB in 65 kB
    monkeypatch.setenv("MORPHREG_MEMORY_LIMIT", "128M")
    with pytest.raises(io.ImageReadError, match=r"array 'vol' declares 67 MB uncompressed, more than the 17 MB"):
        io.load_volume(tmp_path / "bomb.npz")


def test_memory_errors_give_one_line(corpus, monkeypatch, capsys):
    from morphreg.workflows import files as register

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.20 GiB for an array with shape (1000, 1000, 800)")

    monkeypatch.setattr(register.io, "load_volume", exhausted)
    assert main(_register(corpus)) == 1
    assert re.search(r"error: out of memory \(MemoryError\): .*\(memory limit", _one_line(capsys))

    def allocator(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(register.io, "load_volume", allocator)
    assert main(_register(corpus)) == 1
    line = _one_line(capsys)
    assert "out of memory (RuntimeError)" in line and "DefaultCPUAllocator" not in line


def test_an_evaluation_without_figures_survives_a_broken_matplotlib(corpus, tmp_path, monkeypatch, capsys):
    import morphreg

    monkeypatch.setitem(sys.modules, "morphreg.viz", None)  # what a bad MPLBACKEND does to the import
    monkeypatch.delattr(morphreg, "viz", raising=False)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"moving,fixed\n{corpus}/img/s0.nii.gz,{corpus}/img/s1.nii.gz\n")
    common = ["evaluate", "--model", str(corpus / "run"), "--pairs", str(pairs), "--no-progress", "--no-hd95"]
    assert main([*common, "--figures", "0", "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "summary.json").is_file()
    assert main([*common, "--figures", "1", "--out", str(tmp_path / "ev2")]) == 1
    assert "cannot draw figures: matplotlib does not load" in _one_line(capsys)
    assert not (tmp_path / "ev2").exists()


def test_a_malformed_world_size_is_named(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["train", "--data", str(corpus / "img"), "--out", str(tmp_path / "r"), *TINY]) == 1
    assert "environment variable WORLD_SIZE must be a non-negative integer (torchrun sets it), got 'two'" in \
        _one_line(capsys)
    assert not (tmp_path / "r").exists()


def test_resume_names_a_damaged_metrics_file(corpus, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    header, first, *rest = (run / "metrics.csv").read_bytes().split(b"\n")
    (run / "metrics.csv").write_bytes(b"\n".join([header, b"\0" + first, *rest]))
    assert main(["train", "--data", str(corpus / "img"), "--out", str(run), "--resume", "--steps", "4",
                 "--no-progress", *TINY]) == 1
    assert re.search(r"cannot resume: '.*metrics.csv' is damaged", _one_line(capsys))


def test_matrix_goes_into_a_new_folder_atomically(corpus, tmp_path):
    matrix = tmp_path / "new" / "folder" / "affine.txt"
    assert main(["register", "--method", "rigid", "--moving", str(corpus / "img/s0.nii.gz"), "--fixed",
                 str(corpus / "img/s1.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"), "--matrix",
                 str(matrix)]) == 0
    assert np.loadtxt(matrix).shape == (4, 4)
    assert [p.name for p in matrix.parent.iterdir()] == ["affine.txt"]  # no temporary file left behind


def test_a_2d_image_with_trailing_singleton_axes_is_2d(tmp_path):
    from morphreg import io

    _nii(tmp_path / "x.nii.gz", np.arange(20, dtype=np.float32).reshape(4, 5, 1, 1, 1))
    volume = io.load_volume(tmp_path / "x.nii.gz")
    assert volume.shape == (4, 5) and volume.data[3, 4] == 19


def test_an_npz_array_pairs_with_a_nifti_image(corpus, tmp_path):
    images, _ = synthetic_shapes(2, SHAPE, n_labels=3, seed=2)
    np.savez(tmp_path / "two.npz", a=images[0], b=images[1])
    fixed = _nii(tmp_path / "fixed.nii.gz", images[1], np.eye(4))
    assert main(["register", "--model", str(corpus / "run"), "--moving", str(tmp_path / "two.npz"), "--npz-key", "a",
                 "--fixed", str(fixed), "--moved", str(tmp_path / "moved.nii.gz")]) == 0


@pytest.mark.parametrize("steps", ["21", "63", "70"])
def test_int_steps_is_bounded_on_the_command_line(steps, capsys):
    assert main(["train", "--data", "x", "--out", "y", "--int-steps", steps]) == 2
    assert "expected an integer in [0, 20]" in capsys.readouterr().err


def test_int_steps_is_bounded_in_the_core():
    from morphreg import spatial

    velocity = torch.zeros(1, 2, 8, 8)
    assert torch.equal(spatial.integrate(velocity, spatial.MAX_INT_STEPS), velocity)
    with pytest.raises(ValueError, match=r"argument 'steps' must be an integer in \[0, 20\], got 21"):
        spatial.integrate(velocity, 21)
    with pytest.raises(ValueError, match=r"argument 'int_steps' must be an integer in \[0, 20\], got 64"):
        VxmDense(2, int_steps=64)


@pytest.mark.parametrize(("values", "problem"), [
    (np.array([[0.0, 1.5]]), r"non-integer values such as 1\.5"),
    (np.array([[0.0, np.nan]]), r"non-integer values such as nan"),
    (np.array([[0.0, 3e9]], np.float32), r"values up to 3e\+09"),
    (np.array([[0, 2**40]], np.int64), r"values up to 1\.1e\+12"),
    (np.array([[0, -2]], np.int8), r"negative values \(smallest -2\)"),
    (np.array([[0.0, -1.0]]), r"negative values \(smallest -1\)"),
])
def test_one_label_policy(values, problem):
    from morphreg.data import as_label_map

    with pytest.raises(ValueError, match=r"^--segs 'x' must be an integer label map \(whole numbers in \[0, "
                                         r"2147483647\]\); found " + problem):
        as_label_map(values, "--segs 'x'")


def test_label_policy_keeps_valid_maps():
    from morphreg.data import as_label_map

    assert as_label_map(np.array([[0.0, 7.0]], np.float32), "x").dtype == np.int32
    assert as_label_map(np.array([[0, 200]], np.uint8), "x").dtype == np.uint8
    assert as_label_map(np.array([[True, False]]), "x").dtype == np.uint8
    assert as_label_map(np.array([[0, 2**31 - 1]], np.int64), "x").max() == 2**31 - 1


def test_absurd_widths_are_refused_before_building(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MORPHREG_MEMORY_LIMIT", "1G")
    assert main(["train", "--data", str(corpus / "img"), "--out", str(tmp_path / "r"), "--steps", "1",
                 "--enc", "5000", "5000", "5000", "5000", "--no-progress"]) == 1
    assert re.search(r"the requested network: its VxmDense config .* needs 2\.\d GB of weights, more than the "
                     r"268 MB a model may take", _one_line(capsys))
