"""An SPDX 2.3 SBOM of an image plan, as SPDX JSON.

One package per Debian package that owns a file of the image (name, version, purl,
supplier, source package), one for everything else (the user's programs, files minify
generates), a file entry with SHA1 and SHA256 for every regular file, and the
relationships: the document DESCRIBES the image, the image CONTAINS each package, each
package CONTAINS its files, each program DEPENDS_ON the packages of its closure.
Deterministic: ``created`` from SOURCE_DATE_EPOCH, everything sorted, SPDX ids derived
from paths and names, the namespace from the content.

The JSON is written here, in the layout of spdx-tools' writer (its order of fields,
four spaces of indent), not through spdx-tools' typed model: importing, building and
converting that model cost a third of a second a run. All of the document is
minify's own (hex digests, ids made by ``spdx_id``, escaped purls) but the text of the
root's package fields, which JSON escapes; the one such field SPDX constrains, a
package's homepage, is checked against SPDX's URL pattern here. The tests parse the
documents back with spdx-tools, validate them whole, check that spdx-tools writes
the same bytes, and scan them with syft.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from minify.plan.image import EntryType, ImagePlan
from minify.version import __version__
from minify.write.output import SBOM_NAME

if TYPE_CHECKING:
    from minify.analysis.closure import Analysis
    from minify.plan.image import Digests
    from minify.plan.packages import DebPackage, Ownership

SBOM_PATH = f"/usr/share/minify/{SBOM_NAME}"
INPUTS = "SPDXRef-Package-inputs"
IMAGE = "SPDXRef-Image"
NOASSERTION = "NOASSERTION"
#: SPDX's pattern of a URL (a package's homepage): an optional scheme, optional user
#: information, a host of labels joined by single dots or dashes that ends in a dot
#: and a top-level name of 2 to 5 letters, an optional port and an optional path;
#: matched from the start, in any case.
URL = re.compile(
    r"(?:https?://(?:www\.)?|ssh://|git://|svn://|sftp://|ftp://)?(?:[\w\-.!~*'()%;:&=+$,]+@)?"
    r"[a-z0-9]+(?:[-.][a-z0-9]+){0,100}\.[a-z]{2,5}(?::[0-9]{1,5})?(?:/.*)?",
    re.IGNORECASE,
)
#: The order of a package's fields in spdx-tools' JSON (the SPDX schema's), so that
#: both write the same bytes.
PACKAGE_FIELDS = (
    "SPDXID",
    "comment",
    "downloadLocation",
    "externalRefs",
    "filesAnalyzed",
    "homepage",
    "name",
    "packageVerificationCode",
    "sourceInfo",
    "supplier",
    "versionInfo",
)

Json = dict[str, Any]


def spdx_id(kind: str, text: str) -> str:
    """A stable SPDX id: letters, digits, '.' and '-' only, unique by a short hash."""
    clean = re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:60] or "x"
    return f"SPDXRef-{kind}-{clean}-{hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def document(
    plan: ImagePlan,
    owned: Ownership,
    analysis: Analysis,
    epoch: int,
    digests: dict[str, Digests],
    warnings: list[str] | None = None,
) -> bytes:
    """The SBOM as SPDX 2.3 JSON bytes; ``digests`` has every regular file of the plan
    (``minify.plan.image.plan_digests``). A homepage that is no URL is left out, with
    a warning in ``warnings``: one stanza's field never fails the run."""
    files_of = {path: digests[path] for path in sorted(digests) if plan.entry(path) is not None}
    name = plan.config.entrypoint[0] if plan.config.entrypoint else "image"
    listing = [(path, (d.sha1, d.sha256)) for path, d in files_of.items()]
    namespace = hashlib.sha256(repr(listing).encode("utf-8", "surrogateescape")).hexdigest()
    contents: dict[str, list[str]] = {}
    for path, d in files_of.items():
        contents.setdefault(spdx_id("Package", owned.owners[path]) if path in owned.owners else INPUTS, []).append(
            d.sha1
        )
    packages = [_image_package(name), _inputs_package()]
    packages += [_deb_package(p, owned.distro, warnings if warnings is not None else []) for p in owned.packages]
    packages[1:] = [_with_verification_code(p, contents) for p in packages[1:]]
    packages = [_ordered(p) for p in packages]  # the schema's order, once
    files = []
    relationships = [_relationship("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE)]
    relationships += [_relationship(IMAGE, "CONTAINS", p["SPDXID"]) for p in packages[1:]]
    for path, d in files_of.items():
        file_id = spdx_id("File", path)
        checksums = [{"algorithm": "SHA1", "checksumValue": d.sha1}, {"algorithm": "SHA256", "checksumValue": d.sha256}]
        files.append({"SPDXID": file_id, "checksums": checksums, "fileName": f".{path}"})
        owner = owned.owners.get(path)
        relationships.append(_relationship(spdx_id("Package", owner) if owner else INPUTS, "CONTAINS", file_id))
    relationships += _dependencies(plan, owned, analysis)
    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: Json = {
        "SPDXID": "SPDXRef-DOCUMENT",
        "creationInfo": {"created": created, "creators": [f"Tool: minify-{__version__}"]},
        "dataLicense": "CC0-1.0",
        "name": f"minify image of {name}",
        "spdxVersion": "SPDX-2.3",
        "documentNamespace": f"https://minify.invalid/spdx/{namespace}",
        "packages": packages,
        "files": files,
        "relationships": relationships,
    }
    # an empty list is no field at all, as spdx-tools writes it; ASCII, as json escapes
    return json.dumps({k: v for k, v in doc.items() if v != []}, indent=4).encode("ascii")


def _relationship(element: str, kind: str, related: str) -> Json:
    return {"spdxElementId": element, "relatedSpdxElement": related, "relationshipType": kind}


def _ordered(package: Json) -> Json:
    """A package's fields in the schema's order, without those it has not."""
    return {k: package[k] for k in PACKAGE_FIELDS if package.get(k) is not None}


def _with_verification_code(package: Json, contents: dict[str, list[str]]) -> Json:
    """SPDX 2.3 7.9: a package's code is the SHA1 of the sorted SHA1s of its files; a
    package with no file in the image has none, and its files are not analysed."""
    sha1s = contents.get(package["SPDXID"], [])
    out = {**package, "filesAnalyzed": bool(sha1s)}
    if sha1s:
        code = hashlib.sha1("".join(sorted(sha1s)).encode(), usedforsecurity=False).hexdigest()
        out["packageVerificationCode"] = {"packageVerificationCodeValue": code}
    return out


def _image_package(name: str) -> Json:
    return {"SPDXID": IMAGE, "name": f"image of {name}", "downloadLocation": NOASSERTION, "filesAnalyzed": False}


def _inputs_package() -> Json:
    return {
        "SPDXID": INPUTS,
        "name": "inputs and generated files",
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "comment": "the programs given to minify, and files minify writes itself; no package owns them",
    }


def _deb_package(package: DebPackage, distro: dict[str, str], warnings: list[str]) -> Json:
    fields = dict(package.fields)
    # every part percent-encoded as the purl spec says: os-release and the status file
    # are the root's, and ID=debian/../../evil?x=1#frag must stay one namespace
    namespace = distro.get("ID", "debian")
    qualifiers = f"arch={_purl_escape(package.architecture)}" if package.architecture else ""
    if distro.get("VERSION_ID"):
        qualifiers += f"{'&' if qualifiers else ''}distro={_purl_escape(namespace + '-' + distro['VERSION_ID'])}"
    purl = f"pkg:deb/{_purl_escape(namespace)}/{_purl_escape(package.name)}@{_purl_escape(package.version)}" + (
        f"?{qualifiers}" if qualifiers else ""
    )
    homepage = fields.get("Homepage") or None
    if homepage is not None and not URL.match(homepage):
        warnings.append(f"{package.name}: its Homepage {homepage!r} is not a URL; left out of the SBOM")
        homepage = None
    maintainer = fields.get("Maintainer", "")
    found = re.fullmatch(r"\s*(.*?)\s*<([^>]*)>\s*", maintainer)
    supplier = NOASSERTION
    if found and found.group(1):
        supplier = f"Person: {found.group(1)}" + (f" ({found.group(2)})" if found.group(2) else "")
    return {
        "SPDXID": spdx_id("Package", package.name),
        "name": package.name,
        "downloadLocation": NOASSERTION,
        "versionInfo": package.version,
        "supplier": supplier,
        "filesAnalyzed": False,
        "homepage": homepage,
        "sourceInfo": f"built package from: {package.source}" if package.source else None,
        "externalRefs": [{"referenceCategory": "PACKAGE_MANAGER", "referenceLocator": purl, "referenceType": "purl"}],
    }


def _purl_escape(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.~_-]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


def _dependencies(plan: ImagePlan, owned: Ownership, analysis: Analysis) -> list[Json]:
    """Each program DEPENDS_ON the packages that own a file of its closure."""
    out: list[Json] = []
    for program, image_path in zip(analysis.programs, plan.programs, strict=False):
        entry = plan.lookup(image_path)
        if entry is None or entry.type is not EntryType.FILE:
            continue
        needs = set()
        for obj in program.objects[1:]:
            found = plan.lookup(obj.path) or plan.lookup(obj.realpath)
            owner = owned.owners.get(found.path) if found else None
            if owner:
                needs.add(owner)
        program_id = spdx_id("File", entry.path)
        out.extend(_relationship(program_id, "DEPENDS_ON", spdx_id("Package", n)) for n in sorted(needs))
    return out
