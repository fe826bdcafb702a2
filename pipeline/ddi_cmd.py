"""CLI: ``keys generate``, ``sign``, ``inspect`` — the signing side of DDIs and detached verity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import InputError

DEFAULT_KEY, DEFAULT_CERT = Path("keys/release.key"), Path("keys/release.crt")


def _passphrase_args(p) -> None:
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the "
                   "key's passphrase")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE", help="file holding it")


def cmd_keys_generate(args) -> int:
    from .keys import generate, read_passphrase

    passphrase = read_passphrase(args.passphrase_env, args.passphrase_file)
    args.key.parent.mkdir(parents=True, exist_ok=True)
    signer = generate(args.key, args.cert, subject=args.subject, days=args.days,
                      passphrase=passphrase)
    print(f"key  {args.key} (mode 0600{', encrypted' if passphrase else ''})", file=sys.stderr)
    print(f"cert {args.cert} (sha256 {signer.fingerprint})", file=sys.stderr)
    print("install the certificate on hosts as /etc/verity.d/NAME.crt to trust signed images",
          file=sys.stderr)
    return 0


def cmd_sign(args) -> int:
    from .ddi import sign_ddi
    from .ddi.gpt import has_gpt
    from .keys import load_signer, read_passphrase

    signer = None
    if args.signature is None:
        if args.key is None or args.cert is None:
            raise InputError("sign", "needs --key and --cert, or --signature and --cert")
        signer = load_signer(args.key, args.cert,
                             read_passphrase(args.passphrase_env, args.passphrase_file))
    elif args.cert is None:
        raise InputError("sign", "--signature needs --cert (to check it before writing)")
    image = args.image
    if not has_gpt(image):
        return _sign_detached(image, signer, args)
    info = sign_ddi(image, signer=signer, p7s=args.signature, cert=args.cert)
    _update_manifest(image, {"ddi": info.to_manifest()}, info.sha256)
    for warning in info.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"signed {image}: root hash {info.root_hash}, certificate "
          f"{info.certificate_fingerprint}, sha256 {info.sha256}", file=sys.stderr)
    return 0


def _sign_detached(image: Path, signer, args) -> int:
    """A plain image with NAME.roothash next to it: write NAME.roothash.p7s."""
    from .ddi import signature as sig
    from .keys import load_certificate

    roothash = image.with_name(image.name.removesuffix(".raw") + ".roothash")
    if not roothash.is_file():
        raise InputError(str(image), "neither a DDI nor an image with NAME.roothash next to it",
                         'build with format = "ddi" or verity = "detached"')
    root_hash = roothash.read_text().strip()
    if signer is not None:
        der, warnings = sig.sign_root_hash(root_hash, signer)
    else:
        der, warnings = sig.read_p7s(args.signature), []
        ok, reason = sig.verify(der, root_hash, load_certificate(args.cert))
        if not ok:
            raise InputError(str(args.signature), f"does not verify over root hash {root_hash}: "
                             f"{reason}")
    target = Path(f"{roothash}.p7s")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(der)
    tmp.replace(target)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"signed {roothash} → {target}", file=sys.stderr)
    return 0


def _update_manifest(image: Path, sections: dict, sha256: str) -> None:
    """Keep NAME.manifest.json true after signing: new image hash and DDI section."""
    from . import manifest as mf

    path = image.with_name(image.name.removesuffix(".raw") + ".manifest.json")
    if not path.is_file():
        return
    data = mf.load(path)
    data.update(sections)
    data.setdefault("image", {})["sha256"] = sha256
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(mf.dumps(data))
    tmp.replace(path)


def cmd_inspect(args) -> int:
    from .ddi import inspect_image

    report = inspect_image(args.image, cert=args.cert)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    verity = report.get("verity") or {}
    signature = report.get("signature") or {}
    broken = verity.get("verified") is False or signature.get("verified") is False
    return 1 if broken else 0


def render(report: dict) -> str:
    """A short human summary of ``inspect_image``'s report."""
    lines = [f"{report['path']}: {report['format']}, {report['size']} bytes, sha256 "
             f"{report['sha256']}"]
    for part in report.get("partitions", []):
        lines.append(f"  partition {part['index']}: {part.get('type') or part['typeUuid']} "
                     f"uuid {part['uuid']} offset {part['offset']} size {part['size']}")
    verity = report.get("verity")
    if verity:
        state = "verified" if verity.get("verified") else f"NOT verified ({verity.get('reason')})"
        lines.append(f"  verity: root hash {verity.get('rootHash')} — {state}")
    signature = report.get("signature")
    if signature and signature.get("present"):
        state = f"verified with {signature.get('verifiedWith')}" if signature.get("verified") \
            else f"NOT verified ({signature.get('reason')})"
        lines.append(f"  signature: certificate {signature.get('certificateFingerprint')} — "
                     f"{state}")
    elif signature is not None:
        lines.append("  signature: none")
    fs = report.get("filesystem") or {}
    if fs:
        lines.append(f"  file system: {fs.get('type')}, {fs.get('files')} files, "
                     f"{fs.get('bytes')} bytes")
        release = fs.get("release") or {}
        if release:
            lines.append(f"  {release.get('path')}:")
            lines += [f"    {k}={v}" for k, v in (release.get("fields") or {}).items()]
    if report.get("manifest"):
        lines.append(f"  manifest: {report['manifest'].get('path', 'next to the image')}")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("keys", help="signing keys")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    g = ksub.add_parser("generate", help="make an RSA-4096 key (0600) and a self-signed "
                        "certificate; never overwrites")
    g.add_argument("--key", type=Path, default=DEFAULT_KEY, help=f"default {DEFAULT_KEY}")
    g.add_argument("--cert", type=Path, default=DEFAULT_CERT, help=f"default {DEFAULT_CERT}")
    g.add_argument("--subject", default="CN=sysext-pipeline release signing",
                   help="certificate subject, e.g. 'CN=Example release,O=Example'")
    g.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    _passphrase_args(g)
    g.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("sign", help="fill the signature partition of a DDI built --unsigned "
                       "(no other byte changes), or write NAME.roothash.p7s")
    p.add_argument("image", type=Path)
    p.add_argument("--key", type=Path, help="private key (PEM)")
    p.add_argument("--cert", type=Path, help="its certificate (PEM)")
    p.add_argument("--signature", type=Path, metavar="P7S", help="a detached DER PKCS#7 over "
                   "the hex root hash made elsewhere (checked against --cert first)")
    _passphrase_args(p)
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("inspect", help="partitions, verity, signature and release of any image "
                       "(exit 1 when verity or the signature does not verify)")
    p.add_argument("image", type=Path)
    p.add_argument("--cert", type=Path, help="check the signature against this certificate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
