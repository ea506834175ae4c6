"""What an .npz file declares, read without decompressing a single array.

An .npz is a zip archive with one member `<key>.npy` per array; each member starts with a short
header (magic, version, then a dict of dtype, order and shape). `read_npz_headers` opens the
archive, lists its members and reads each header alone, so that a file can be judged by the
sizes it declares (a few kilobytes of compressed zeros can declare gigabytes) before any array is
read. Object, structured and void dtypes are refused here: they are never parameters or results,
and an object array is a pickle.
"""
import math
import os
import zipfile
import zlib

from numpy.lib import format as npy_format

HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def check_readable_file(path, label):
    """A ValueError naming `label` for a path that is missing, a folder or not a zip archive."""
    if not os.path.exists(path):
        raise ValueError(f"{label}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{label}: is a directory, expected an .npz file")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise ValueError(f"{label}: cannot read the file ({type(e).__name__}: {e.strerror})") from None
    if not is_zip:
        raise ValueError(f"{label}: not an .npz archive (not a zip file)")


def read_npz_headers(path, label, max_members=None):
    """{key: (dtype, shape)} of every array of the .npz at `path`, from the headers alone.

    Every problem is a ValueError of one line that starts with `label`."""
    check_readable_file(path, label)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if max_members is not None and len(infos) > max_members:
                raise ValueError(f"{label}: {len(infos)} arrays in the archive, the limit is "
                                 f"{max_members}")
            names = [info.filename for info in infos]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{label}: member(s) {twice} appear more than once in the archive")
            return {info.filename[:-4]: _member_header(archive, info, label) for info in infos}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError,
            NotImplementedError) as e:  # zipfile raises NotImplementedError for an unknown compression method
        raise ValueError(f"{label}: not a readable .npz archive ({type(e).__name__}: "
                         f"{' '.join(str(e).split())})") from None


def _member_header(archive, info, label):
    if not info.filename.endswith(".npy") or info.is_dir():
        raise ValueError(f"{label}: member {info.filename!r} is not an .npy array")
    key = info.filename[:-4]
    with archive.open(info) as f:
        try:
            version = npy_format.read_magic(f)
            if version not in HEADER_READERS:
                raise ValueError(f"format version {version} (expected 1.0 or 2.0)")
            shape, _, dtype = HEADER_READERS[version](f)
        except ValueError as e:
            raise ValueError(f"{label}: {key}: not a valid .npy header "
                             f"({' '.join(str(e).split())})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind == "V":
        raise ValueError(f"{label}: {key}: dtype {dtype} is refused (object, structured and void "
                         f"arrays are never parameters or results; an object array is a pickle)")
    return dtype, tuple(shape)


def declared_numbers(shape):
    """Entries of an array of this shape (a Python integer: no overflow)."""
    return math.prod(int(n) for n in shape)
