"""An SPDX 2.3 SBOM of an image plan, written and validated by spdx-tools.

One package per Debian package that owns a file of the image (name, version, purl,
supplier, source package), one for everything else (the user's programs, files minify
generates), a file entry with SHA1 and SHA256 for every regular file, and the
relationships: the document DESCRIBES the image, the image CONTAINS each package, each
package CONTAINS its files, each program DEPENDS_ON the packages of its closure.
Deterministic: ``created`` from SOURCE_DATE_EPOCH, everything sorted, SPDX ids derived
from paths and names, the namespace from the content.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import re
from typing import TYPE_CHECKING

from minify.plan.image import EntryType, ImagePlan
from minify.version import __version__
from minify.write.output import SBOM_NAME

if TYPE_CHECKING:
    from spdx_tools.spdx.model import Document, Package

    from minify.analysis.closure import Analysis
    from minify.plan.image import Digests
    from minify.plan.packages import DebPackage, Ownership

SBOM_PATH = f"/usr/share/minify/{SBOM_NAME}"
INPUTS = "SPDXRef-Package-inputs"
IMAGE = "SPDXRef-Image"


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
    """The SBOM as SPDX 2.3 JSON bytes, validated by spdx-tools; ``digests`` has every
    regular file of the plan (``minify.plan.image.plan_digests``). A package field that
    spdx-tools would reject (a Homepage that is no URL) is left out, with a warning
    in ``warnings``: one stanza's field never fails the run."""
    from spdx_tools.spdx.model import (
        Checksum,
        ChecksumAlgorithm,
        CreationInfo,
        Document,
        File,
        Relationship,
        RelationshipType,
    )
    from spdx_tools.spdx.model.actor import Actor, ActorType
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    files_of = {path: digests[path] for path in sorted(digests) if plan.entry(path) is not None}
    name = plan.config.entrypoint[0] if plan.config.entrypoint else "image"
    listing = [(path, (d.sha1, d.sha256)) for path, d in files_of.items()]
    namespace = hashlib.sha256(repr(listing).encode("utf-8", "surrogateescape")).hexdigest()
    info = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=f"minify image of {name}",
        document_namespace=f"https://minify.invalid/spdx/{namespace}",
        creators=[Actor(ActorType.TOOL, f"minify-{__version__}")],
        created=datetime.datetime.fromtimestamp(epoch, datetime.UTC).replace(tzinfo=None),
    )
    contents: dict[str, list[str]] = {}
    for path, d in files_of.items():
        contents.setdefault(spdx_id("Package", owned.owners[path]) if path in owned.owners else INPUTS, []).append(
            d.sha1
        )
    packages = [_image_package(name), _inputs_package()]
    packages += [_deb_package(p, owned.distro, warnings if warnings is not None else []) for p in owned.packages]
    _verification_codes(packages[1:], contents)
    files = []
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, IMAGE)]
    relationships += [Relationship(IMAGE, RelationshipType.CONTAINS, p.spdx_id) for p in packages[1:]]
    for path, d in files_of.items():
        file_id = spdx_id("File", path)
        checksums = [Checksum(ChecksumAlgorithm.SHA1, d.sha1), Checksum(ChecksumAlgorithm.SHA256, d.sha256)]
        files.append(File(name=f".{path}", spdx_id=file_id, checksums=checksums))
        owner = owned.owners.get(path)
        relationships.append(
            Relationship(spdx_id("Package", owner) if owner else INPUTS, RelationshipType.CONTAINS, file_id)
        )
    relationships += _dependencies(plan, owned, analysis)
    doc = _validated(Document(info, packages=packages, files=files, relationships=relationships))
    stream = io.StringIO()
    write_document_to_stream(doc, stream, validate=False)  # validated above, once
    return stream.getvalue().encode("utf-8", "surrogateescape")


def _validated(doc: Document) -> Document:
    """spdx-tools' checks of what comes from the root (each package's fields, and how
    it stands in the document) and of the creation info; ValueError naming what is
    invalid. Files and relationships are minify's own (hex digests, ids made by
    ``spdx_id``), built the same way every run; the tests validate whole documents."""
    from spdx_tools.spdx.validation.creation_info_validator import validate_creation_info
    from spdx_tools.spdx.validation.package_validator import validate_packages

    problems = validate_creation_info(doc.creation_info, "SPDX-2.3")
    problems += validate_packages(doc.packages, "SPDX-2.3", doc)
    if problems:
        raise ValueError(f"Document is not valid. The following errors were detected: {problems}")
    return doc


def _verification_codes(packages: list[Package], contents: dict[str, list[str]]) -> None:
    """SPDX 2.3 7.9: each package's code is the SHA1 of the sorted SHA1s of its files."""
    from spdx_tools.spdx.model import PackageVerificationCode

    for package in packages:
        sha1s = contents.get(package.spdx_id, [])
        package.files_analyzed = bool(sha1s)
        if sha1s:
            package.verification_code = PackageVerificationCode(
                hashlib.sha1("".join(sorted(sha1s)).encode(), usedforsecurity=False).hexdigest()
            )


def _image_package(name: str) -> Package:
    from spdx_tools.spdx.model import Package, SpdxNoAssertion

    return Package(IMAGE, f"image of {name}", SpdxNoAssertion(), files_analyzed=False)


def _inputs_package() -> Package:
    from spdx_tools.spdx.model import Package, SpdxNoAssertion

    return Package(
        INPUTS,
        "inputs and generated files",
        SpdxNoAssertion(),
        files_analyzed=False,
        comment="the programs given to minify, and files minify writes itself; no package owns them",
    )


def _deb_package(package: DebPackage, distro: dict[str, str], warnings: list[str]) -> Package:
    from spdx_tools.spdx.model import (
        ExternalPackageRef,
        ExternalPackageRefCategory,
        Package,
        SpdxNoAssertion,
    )
    from spdx_tools.spdx.model.actor import Actor, ActorType
    from spdx_tools.spdx.validation.uri_validators import validate_url

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
    if homepage is not None and validate_url(homepage):
        warnings.append(f"{package.name}: its Homepage {homepage!r} is not a URL; left out of the SBOM")
        homepage = None
    maintainer = fields.get("Maintainer", "")
    found = re.fullmatch(r"\s*(.*?)\s*<([^>]*)>\s*", maintainer)
    supplier = Actor(ActorType.PERSON, found.group(1), found.group(2)) if found and found.group(1) else None
    return Package(
        spdx_id("Package", package.name),
        package.name,
        SpdxNoAssertion(),
        version=package.version,
        supplier=supplier or SpdxNoAssertion(),
        files_analyzed=False,
        homepage=homepage,
        source_info=f"built package from: {package.source}" if package.source else None,
        external_references=[ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)],
    )


def _purl_escape(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.~_-]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


def _dependencies(plan: ImagePlan, owned: Ownership, analysis: Analysis) -> list[object]:
    """Each program DEPENDS_ON the packages that own a file of its closure."""
    from spdx_tools.spdx.model import Relationship, RelationshipType

    out: list[object] = []
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
        out.extend(Relationship(program_id, RelationshipType.DEPENDS_ON, spdx_id("Package", n)) for n in sorted(needs))
    return out
