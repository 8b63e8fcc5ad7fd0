"""S3 XML documents: responses built from typed values, requests parsed strictly.

Responses are assembled from escaped strings rather than an element tree:
they are flat, and listing thousands of keys is a hot path.  Request bodies
(DeleteObjects, CompleteMultipartUpload, CreateBucketConfiguration) are parsed
with the stdlib parser after a size check; anything that is not the documented
shape is MalformedXML.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from xml.sax.saxutils import escape as _escape

from .errors import S3Error
from .numbers import decimal

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_XML_BODY = 2 * 1024 * 1024  # 1000 keys of 1 KiB each plus markup


_QUOTE = {'"': "&quot;"}
_SPECIAL = re.compile('[&<>"]')


def esc(value: str) -> str:
    """Text for element content or an attribute; most keys and values need nothing (a listing
    escapes thousands of them)."""
    return _escape(value, _QUOTE) if _SPECIAL.search(value) else value


@lru_cache(maxsize=4096)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso8601(ts: float) -> str:
    """S3's listing timestamp: 2009-10-12T17:50:30.000Z (the milliseconds truncated, as
    datetime.fromtimestamp's microseconds // 1000; the second's text cached: a listing's
    objects were mostly written in few seconds)."""
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    return f"{_second(int(whole))}.{us // 1000:03d}Z"


def elem(name: str, value: str | int | bool | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = esc(str(value))
    return f"<{name}>{text}</{name}>"


def document(root: str, body: str) -> bytes:
    return f'{HEADER}<{root} xmlns="{NS}">{body}</{root}>'.encode()


def error_document(code: str, message: str, resource: str, request_id: str,
                   extra: dict[str, str] | None = None) -> bytes:
    parts = [elem("Code", code), elem("Message", message)]
    for k, v in (extra or {}).items():
        parts.append(elem(k, v))
    parts.append(elem("Resource", resource))
    parts.append(elem("RequestId", request_id))
    return f"{HEADER}<Error>{''.join(parts)}</Error>".encode()


def owner(owner_id: str, display: str) -> str:
    return f"<Owner>{elem('ID', owner_id)}{elem('DisplayName', display)}</Owner>"


# ------------------------------------------------------------------ requests

def _strip(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> ET.Element:
    if len(body) > MAX_XML_BODY:
        raise S3Error("MalformedXML", "The XML body is larger than this operation accepts")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        # S3 documents never carry a DTD; refusing them rules out entity expansion.
        raise S3Error("MalformedXML", "DTDs are not allowed")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error("MalformedXML", f"The XML you provided was not well-formed: {exc}") from None
    for node in root.iter():
        node.tag = _strip(node.tag)
    return root


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    keys: list[str]
    quiet: bool
    conditions: dict[str, DeleteCondition] = field(default_factory=dict)  # the keys given any
    versions: list[str | None] = field(default_factory=list)  # each key's <VersionId>, in order


@dataclass(frozen=True, slots=True)
class DeleteCondition:
    """An <Object>'s <ETag>, <Size> and <LastModifiedTime> (epoch seconds) in DeleteObjects."""
    etag: str | None
    size: int | None
    mtime: int | None


def parse_delete(body: bytes) -> DeleteRequest:
    root = parse_xml(body)
    if root.tag != "Delete":
        raise S3Error("MalformedXML")
    keys: list[str] = []
    versions: list[str | None] = []
    conditions: dict[str, DeleteCondition] = {}
    quiet = False
    for child in root:
        if child.tag == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif child.tag == "Object":
            key = child.findtext("Key")
            if key is None:
                raise S3Error("MalformedXML", "Each Object needs a Key")
            keys.append(key)
            versions.append(child.findtext("VersionId"))
            etag, size, when = child.findtext("ETag"), child.findtext("Size"), child.findtext("LastModifiedTime")
            if etag is not None or size is not None or when is not None:
                conditions[key] = DeleteCondition(etag.strip().strip('"') if etag is not None else None,
                                                  _number(size, "Size") if size is not None else None,
                                                  _instant(when) if when is not None else None)
    if not keys:
        raise S3Error("MalformedXML", "The Delete element needs at least one Object")
    if len(keys) > 1000:
        raise S3Error("MalformedXML", "DeleteObjects accepts at most 1000 keys")
    return DeleteRequest(keys, quiet, conditions, versions)


def _number(text: str, name: str) -> int:
    n = decimal(text.strip())
    if n is None:
        raise S3Error("MalformedXML", f"{name} must be a non-negative integer")
    return n


def _instant(text: str) -> int:
    """A time as the SDKs send it (the model says RFC 822, as botocore does), or ISO 8601."""
    try:
        return int(email.utils.parsedate_to_datetime(text.strip()).timestamp())
    except (TypeError, ValueError):
        pass
    try:
        return int(datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise S3Error("MalformedXML", "LastModifiedTime must be an RFC 822 or ISO 8601 time") from None


@dataclass(frozen=True, slots=True)
class CompletedPart:
    number: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)  # <ChecksumCRC32> etc., by algorithm


def parse_complete_multipart(body: bytes) -> list[CompletedPart]:
    root = parse_xml(body)
    if root.tag != "CompleteMultipartUpload":
        raise S3Error("MalformedXML")
    parts: list[CompletedPart] = []
    for child in root:
        if child.tag != "Part":
            continue
        number = child.findtext("PartNumber")
        etag = child.findtext("ETag")
        n = decimal(number.strip()) if number is not None else None
        if n is None or etag is None:
            raise S3Error("MalformedXML", "Each Part needs a PartNumber and an ETag")
        sums = {name[len("Checksum"):].lower(): (child.findtext(name) or "").strip()
                for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")
                if child.find(name) is not None}
        parts.append(CompletedPart(n, etag.strip().strip('"'), sums))
    if not parts:
        raise S3Error("MalformedXML", "You must specify at least one part")
    return parts


def parse_location_constraint(body: bytes) -> str | None:
    if not body.strip():
        return None
    root = parse_xml(body)
    if root.tag != "CreateBucketConfiguration":
        raise S3Error("MalformedXML")
    return root.findtext("LocationConstraint")


def join(parts: Iterable[str]) -> str:
    return "".join(parts)


def acl_grants(body: bytes) -> list[tuple[str, str]]:
    """(grantee id or URI, permission) of an AccessControlPolicy document."""
    root = parse_xml(body)
    if root.tag != "AccessControlPolicy":
        raise S3Error("MalformedACLError", "The XML you provided was not well-formed or did not validate "
                      "against our published schema")
    out = []
    for grant in root.iter("Grant"):
        grantee = grant.find("Grantee")
        who = ""
        if grantee is not None:
            who = (grantee.findtext("ID") or grantee.findtext("URI") or grantee.findtext("EmailAddress") or "").strip()
        out.append((who, (grant.findtext("Permission") or "").strip()))
    return out


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """A <Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging> document."""
    root = parse_xml(body)
    tagset = root.find("TagSet") if root.tag == "Tagging" else None
    if tagset is None:
        raise S3Error("MalformedXML", "A Tagging document holds one TagSet")
    out = []
    for tag in tagset.findall("Tag"):
        key, value = tag.findtext("Key"), tag.findtext("Value")
        if key is None or value is None:
            raise S3Error("MalformedXML", "Each Tag needs a Key and a Value")
        out.append((key, value))
    return out


def parse_encryption(body: bytes) -> tuple[str, str | None]:
    """A PutBucketEncryption document: <ServerSideEncryptionConfiguration> with one <Rule> whose
    <ApplyServerSideEncryptionByDefault> names the <SSEAlgorithm> (and for aws:kms perhaps the
    <KMSMasterKeyID>); the algorithm and the key."""
    root = parse_xml(body)
    rules = root.findall("Rule") if root.tag == "ServerSideEncryptionConfiguration" else []
    if len(rules) != 1:
        raise S3Error("MalformedXML", "A ServerSideEncryptionConfiguration holds one Rule")
    default = rules[0].find("ApplyServerSideEncryptionByDefault")
    algorithm = default.findtext("SSEAlgorithm") if default is not None else None
    if default is None or algorithm is None:
        raise S3Error("MalformedXML", "The Rule needs ApplyServerSideEncryptionByDefault with an SSEAlgorithm")
    key = default.findtext("KMSMasterKeyID")
    return algorithm.strip(), key.strip() if key and key.strip() else None


def encryption(algorithm: str, key: str | None = None) -> str:
    kms = elem("KMSMasterKeyID", key) if key else ""
    return (f"<Rule><ApplyServerSideEncryptionByDefault>{elem('SSEAlgorithm', algorithm)}{kms}"
            "</ApplyServerSideEncryptionByDefault><BucketKeyEnabled>false</BucketKeyEnabled></Rule>")


def tagging(tags: Iterable[tuple[str, str]]) -> str:
    inner = "".join(f"<Tag>{elem('Key', k)}{elem('Value', v)}</Tag>" for k, v in tags)
    return f"<TagSet>{inner}</TagSet>"
