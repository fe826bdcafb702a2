"""Package stage: staging tree → image file (or directory), written atomically into the output dir.

Every flag here exists for reproducibility on the installed tool versions (recorded in the
manifest): the image must depend only on the staging records, not on who ran the build, where,
or when. Owners and modes come from the records (a pseudo file for mksquashfs), never from disk,
so a root and a non-root build give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import tools
from ..errors import BuildError, InputError
from ..outdir import locked_workdir, sweep
from ..recipe import Recipe
from .staging import StagingTree

#: mksquashfs's cache budget: without it, mksquashfs takes a quarter of the machine's memory
#: (932 MiB of RSS at a 1 GB payload); 128M keeps its peak near 80 MiB at the same speed.
SQUASHFS_MEM = "128M"

#: Name prefix of a DDI build's scratch directory in the system's temporary directory.
DDI_SCRATCH = "sysext-pipeline-ddi-"


@dataclass(frozen=True)
class Packed:
    path: Path  # temporary output next to the final one; the build renames it
    tools: dict[str, str | None]
    extras: tuple[Path, ...] = ()  # files published next to the image (NAME.verity, …)
    manifest: dict = field(default_factory=dict)  # "ddi": DdiInfo, "verity": DetachedVerity
    #                                     (the build makes them the manifest model's sections)
    warnings: tuple[str, ...] = ()
    #: (sha256, size) of ``path`` when packing already read it back (a DDI): not hashed again
    digest: tuple[str, int] | None = None


def refuse_unowned_directory(format: str, owner_ids: bool) -> None:
    """A directory image is its staging tree on disk: without root (``owner_ids`` False) its
    files would belong to the builder, not to the owners its manifest records. Checked by the
    build command before anything is fetched (pipeline/commands/build.py) and again at
    packing."""
    if format == "directory" and not owner_ids:
        raise InputError("image.format", f"a directory image built without root holds "
                         f"uid {os.geteuid()}'s owners, not the ones its manifest records",
                         "build it as root, or use squashfs (which records the owners)")


def pack(recipe: Recipe, tree: StagingTree, tmp_output: Path, epoch: int, seed: bytes, *,
         arch: str | None = None, signer=None, tick=None) -> Packed:
    """Write the image for ``recipe.format`` to ``tmp_output`` (same directory as the final).

    ``signer`` (pipeline.keys.Signer) signs a DDI or detached verity; None leaves a DDI's
    signature partition reserved and empty, for offline signing. ``tick(seconds)`` is called
    while the file system tool runs.
    """
    if recipe.format == "directory":
        refuse_unowned_directory(recipe.format, tree.owner_ids)  # the last guard
        tree.close()
        os.rename(tree.root, tmp_output)  # the staging tree *is* the image
        return Packed(tmp_output, {})
    fs_out = tmp_output.with_name(tmp_output.name + ".fs") if recipe.format == "ddi" \
        else tmp_output
    if recipe.filesystem == "squashfs":
        fs_tools = _squashfs(recipe, tree, fs_out, epoch, tick)
    else:
        fs_tools = _erofs(recipe, tree, fs_out, epoch, seed, tick)
    if recipe.format == "ddi":
        return _ddi(recipe, fs_out, tmp_output, fs_tools, seed, arch, signer)
    if recipe.verity == "detached":
        from ..image.ddi import detached_verity

        found = detached_verity(tmp_output, seed=seed, signer=signer, workdir=tmp_output.parent,
                                image_name=tmp_output.name)
        extras = tuple(p for p in (found.verity_path, found.roothash_path,
                                   found.signature_path) if p is not None)
        return Packed(tmp_output, {**fs_tools, "veritysetup": tools.version("veritysetup")},
                      extras, {"verity": found}, found.warnings)
    return Packed(tmp_output, fs_tools)


def _ddi(recipe, fs_image: Path, out: Path, fs_tools, seed, arch, signer) -> Packed:
    from ..image.ddi import assemble_ddi

    if arch in (None, "_any"):
        raise InputError("target.architecture", "a DDI needs one architecture: its partition "
                         "types are per architecture", 'set target.architecture, e.g. "x86-64"')
    # Scratch (padded data copy, verity tree) goes to the system's temporary directory:
    # veritysetup cannot update its header on some file systems (FUSE) the output may be on.
    # Locked like every work tree (pipeline.outdir): a killed build's scratch is swept.
    sweep(tempfile.gettempdir(), DDI_SCRATCH)
    needed = fs_image.stat().st_size * 9 // 8 + (1 << 20)  # a padded copy and its hash tree
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if needed > free:
        raise BuildError(tempfile.gettempdir(), f"not enough free space for the DDI's scratch "
                         f"copy: about {needed} bytes needed, {free} bytes free",
                         "free some space or set TMPDIR to a larger directory")
    with locked_workdir(tempfile.gettempdir(), DDI_SCRATCH) as scratch:
        info = assemble_ddi(fs_image, out, arch=arch, fs_type=recipe.filesystem, seed=seed,
                            signer=signer, workdir=scratch.path)
    fs_image.unlink()
    extras = ()
    if signer is None:  # offline signing: what the signing host needs, next to the image
        roothash = out.with_name(out.name.removesuffix(".raw") + ".roothash")
        roothash.write_text(info.root_hash + "\n")
        extras = (roothash,)
    versions = {**fs_tools, "systemd-repart": tools.version("systemd-repart"),
                "veritysetup": tools.version("veritysetup")}
    return Packed(out, versions, extras, {"ddi": info}, info.warnings,
                  (info.sha256, info.size))


def _squashfs(recipe: Recipe, tree: StagingTree, out: Path, epoch: int, tick) -> dict:
    pseudo = tree.root.parent / (tree.root.name + ".pseudo")
    with open(pseudo, "w", encoding="utf-8") as fh:
        for path in sorted(tree.records):
            record = tree.records[path]
            fh.write(f"{_pseudo_quote(path)} m {record.mode:04o} {record.uid} {record.gid}\n")
    args = [tree.root, out, "-noappend", "-no-progress", "-quiet", "-mkfs-time", str(epoch),
            "-root-mode", "0755", "-root-uid", "0", "-root-gid", "0", "-pf", pseudo, "-xattrs",
            "-mem", SQUASHFS_MEM]  # bounded memory; the image bytes do not depend on it
    args += _squashfs_compression(recipe)
    try:
        tools.run("mksquashfs", args, what=f"packing {out.name}", tick=tick)
    finally:
        pseudo.unlink(missing_ok=True)
    return {"mksquashfs": tools.version("mksquashfs")}


def _squashfs_compression(recipe: Recipe) -> list[str]:
    if recipe.compression == "none":
        return ["-noI", "-noId", "-noD", "-noF", "-noX"]
    args = ["-comp", recipe.compression]
    if recipe.compression_level is not None:  # the recipe allows it only for zstd, gzip, lzo
        args += ["-Xcompression-level", str(recipe.compression_level)]
    return args


def _pseudo_quote(path: str) -> str:
    if any(c in path for c in ' "\\\t\n'):
        return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return path


def _erofs(recipe: Recipe, tree: StagingTree, out: Path, epoch: int, seed: bytes,
           tick) -> dict:
    if recipe.mtime == "clamp":
        raise BuildError("image.mtime", "clamp is not reproducible with mkfs.erofs 1.5 "
                         "(-T sets every inode's time)", 'use mtime = "set" for erofs')
    import uuid  # only erofs needs these two (uuid imports platform): imported here

    from .sorted_tree import run_sorted

    fs_uuid = uuid.UUID(bytes=hashlib.sha256(b"erofs-uuid" + seed).digest()[:16], version=4)
    args = ["--quiet", "-T", str(epoch), "-U", str(fs_uuid)]
    if recipe.compression != "none":
        level = "" if recipe.compression_level is None else f",{recipe.compression_level}"
        args.append(f"-z{recipe.compression}{level}")
    owners = {(r.uid, r.gid) for r in tree.records.values()}
    if not tree.owner_ids:
        if owners - {(0, 0)}:
            raise BuildError("owners", "an erofs image with non-root owners needs a root build",
                             "build as root, or use squashfs")
        args.append("--all-root")
    size = sum(r.size for r in {id(r): r for r in tree.records.values()}.values())
    run_sorted(tree, "mkfs.erofs", [*args, out], what=f"packing {out.name}", tick=tick,
               size_hint=size)
    return {"mkfs.erofs": tools.version("mkfs.erofs")}
