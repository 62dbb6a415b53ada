"""Hypothesis over NIfTI headers against the label validator, run as a child process by test_header_bombs (so that
its peak memory can be measured alone): shapes, voxel types, scale factors, dimensions, offsets, affines, magic,
byte order, gzip, and data of every length. ``check_label`` must accept (a uint8 label of the image's shape, values
in range) or refuse with a LabelFileError; anything else fails. Usage: ``python _nifti_fuzz.py MAX_EXAMPLES``."""

from __future__ import annotations

import gzip
import sys
from typing import Any

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activeseg.oracles.label_files import LabelFileError, Reference, check_label

SHAPE = (6, 7, 5)
AFFINE = np.array([[1.5, 0, 0, -4], [0, 2, 0, 3], [0, 0, 2.5, 1], [0, 0, 0, 1]], dtype=np.float64)
REFERENCE = Reference(SHAPE, AFFINE, 3)
CODES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 7, 9999, -1]
NASTY = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-30, 1e30, 3e38, float("nan"), float("inf"), float("-inf")]

floats = st.one_of(st.sampled_from(NASTY), st.floats(allow_nan=True, allow_infinity=True, width=32))
sizes = st.one_of(st.integers(-3, 8), st.sampled_from([*SHAPE, 1, 1000, 2000, 32767]), st.integers(1, 2**15 - 1))


@st.composite
def headers(draw: Any) -> bytes:
    two = draw(st.booleans())
    header = (nib.Nifti2Header if two else nib.Nifti1Header)(endianness=draw(st.sampled_from(["<", ">"])))
    if draw(st.integers(0, 3)):  # mostly the image's own shape, sometimes with trailing dimensions
        dims = [*SHAPE, *draw(st.lists(st.sampled_from([1, 1, 2]), max_size=3))]
    else:
        dims = draw(st.lists(sizes if not two else st.one_of(sizes, st.integers(1, 2**40)), max_size=8))
    dim = np.zeros(8, dtype=np.int64)
    dim[0] = len(dims) if draw(st.integers(0, 4)) else draw(st.integers(-2, 9))
    dim[1 : 1 + min(len(dims), 7)] = dims[:7]
    header["dim"] = dim
    code = draw(st.sampled_from([2, 2, 4, 8, 16, 64, 256, 512, *CODES]))
    header["datatype"] = code
    header["bitpix"] = draw(st.sampled_from([8, 16, 32, 64, 0, 7]))
    header["scl_slope"] = draw(st.one_of(st.just(1.0), st.just(0.0), floats))
    header["scl_inter"] = draw(st.one_of(st.just(0.0), floats))
    minimum = 544 if two else 352
    odd = [0, 348, 10**9, -5] + ([] if two else [float("nan"), float("inf")])
    header["vox_offset"] = draw(st.one_of(st.just(minimum), st.sampled_from(odd)))
    if draw(st.integers(0, 2)):
        affine = AFFINE
    else:
        affine = np.array(draw(st.lists(floats, min_size=16, max_size=16)), dtype=np.float64).reshape(4, 4)
    header["sform_code"] = draw(st.sampled_from([1, 0, 2, 5]))
    header["qform_code"] = draw(st.sampled_from([0, 1]))
    for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
        with np.errstate(all="ignore"):
            header[name] = affine[row]
    for name in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x"):
        header[name] = draw(floats)
    if not draw(st.integers(0, 10)):
        header["magic"] = draw(st.sampled_from([b"ni1", b"n+2", b"n+1", b"xyz", b""]))
    block = bytes(header.binaryblock) + bytes(4)
    if draw(st.integers(0, 1)):  # voxels of a plausible label, in the header's type if there is one
        try:
            dtype = header.get_data_dtype()
            values = draw(st.lists(st.sampled_from([0, 1, 2, 3, 0.5]), min_size=1, max_size=4))
            data = np.resize(np.asarray(values), int(np.prod(SHAPE))).astype(dtype).tobytes()
        except Exception:
            data = bytes(int(np.prod(SHAPE)))
        offset = float(header["vox_offset"])
        block += bytes(max(0, int(offset) - len(block))) if 0 < offset < 4096 else b""
        block += data
    else:
        block += draw(st.binary(max_size=600))
    cut = None if draw(st.integers(0, 4)) else draw(st.integers(0, len(block)))
    block = block[:cut] if cut is not None else block
    return gzip.compress(block, compresslevel=1) if draw(st.booleans()) else block


def run(max_examples: int) -> None:
    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(headers())
    def accepted_or_refused_cleanly(payload: bytes) -> None:
        try:
            label = check_label("fuzz", payload, REFERENCE)
        except LabelFileError as err:
            assert str(err).startswith("fuzz: "), err
            return
        assert label.dtype == np.uint8 and label.shape == SHAPE and int(label.max()) < REFERENCE.num_classes

    accepted_or_refused_cleanly()


if __name__ == "__main__":
    run(int(sys.argv[1]))
    print("ok")
