"""Minimal safetensors reader and writer for torch tensors (no `safetensors` package needed).

Format: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to
a multiple of 8), then the raw little-endian tensor bytes. Each header entry is
{"dtype": ..., "shape": [...], "data_offsets": [begin, end]} with offsets relative to the
start of the data section; an optional "__metadata__" maps strings to strings.

Use from another tool:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from safetensors_io import write_safetensors, read_safetensors
"""

import json
import os
import struct

import numpy as np
import torch

# torch dtype -> (safetensors dtype name, little-endian numpy dtype of the same width used
# to carry the raw bits).
_DTYPES = {
    torch.float32: ("F32", "<f4"),
    torch.float16: ("F16", "<f2"),
    torch.bfloat16: ("BF16", "<i2"),  # numpy has no bfloat16: move the bits as int16
    torch.float64: ("F64", "<f8"),
    torch.int64: ("I64", "<i8"),
    torch.int32: ("I32", "<i4"),
    torch.int16: ("I16", "<i2"),
    torch.int8: ("I8", "<i1"),
    torch.uint8: ("U8", "<u1"),
    torch.bool: ("BOOL", "<u1"),
}
_BY_NAME = {name: (dt, np_dt) for dt, (name, np_dt) in _DTYPES.items()}

# Largest header accepted on read, as in the C++ reader.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def _tensor_bytes(t):
    """Raw little-endian bytes of a tensor."""
    name, np_dt = _DTYPES[t.dtype]
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().astype(np_dt, copy=False).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Writes a dict name -> torch tensor (insertion order kept) atomically to path."""
    if metadata is not None:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"{path}: metadata keys and values must be strings ({k!r})")
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"{path}: invalid tensor name {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{path}: tensor '{name}' is not a torch.Tensor")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor '{name}': unsupported dtype {t.dtype}")
        data = _tensor_bytes(t)
        header[name] = {
            "dtype": _DTYPES[t.dtype][0],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)

    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for data in blobs:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_header(path):
    """(header dict, data section bytes) of a safetensors file, with bounds checked."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: header: file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8 or n > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header: header length {n} is out of bounds")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: header: invalid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header: not a JSON object")
    return header, memoryview(raw)[8 + n:]


def read_safetensors_metadata(path):
    """The `__metadata__` dict of a safetensors file ({} when absent)."""
    header, _ = _read_header(path)
    return dict(header.get("__metadata__") or {})


def read_safetensors(path):
    """Reads a safetensors file into a dict name -> torch tensor, in header order."""
    header, data = _read_header(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, np_dt = _BY_NAME[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: tensor '{name}': bad header entry ({e!r})") from None
        numel = 1
        for d in shape:
            if d < 0:
                raise ValueError(f"{path}: tensor '{name}': negative dimension")
            numel *= d
        if not 0 <= begin <= end <= len(data) or end - begin != numel * np.dtype(np_dt).itemsize:
            raise ValueError(f"{path}: tensor '{name}': data_offsets {[begin, end]} do not "
                             f"match shape {shape} or the file size")
        arr = np.frombuffer(data[begin:end], dtype=np_dt).astype(np_dt[1:], copy=True)
        t = torch.from_numpy(arr).reshape(shape)
        if dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        elif dtype == torch.bool:
            t = t.to(torch.bool)
        out[name] = t
    return out
