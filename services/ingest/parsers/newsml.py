"""IPTC NewsML-G2 documents: a `newsItem`, or a `newsMessage` with several items in its `itemSet`.

In a message, picture items and package items are not stories of their own: a text
item takes its featured picture from a picture item it links to (`itemMeta/link
@residref`), that shares a package group with it, or that is the message's only
picture beside its only text item. Section: a subject whose qcode scheme or type names
a section/desk/department, else the first subject; tags: the other subjects' names. An
empty `<embargoed/>` (embargoed, time to be announced) makes the item `withheld`.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from services.ingest.normalize import (
    ItemRejectedError,
    MarkupTooDeep,
    code_value,
    html_to_text,
    looks_like_opinion,
    looks_like_section,
    optional_text,
    optional_time,
    positive_int,
    safe_url,
    sanitize_html,
    text_to_html,
    xml_inner_html,
)
from services.ingest.parsers.base import (
    ItemError,
    ParsedItem,
    ParseResult,
    Picture,
    PubStatus,
    check_item_count,
    check_subject_count,
)

_ROOTS = frozenset({"newsItem", "newsMessage", "packageItem"})
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_PUBSTATUS: dict[str, PubStatus] = {"usable": "usable", "canceled": "canceled", "withheld": "withheld"}


def is_newsml(root: Any) -> bool:
    """Whether a parsed XML root is a NewsML-G2 item or message."""
    return etree.QName(root).localname in _ROOTS


def count(root: Any) -> int:
    """How many members (items, pictures, packages) a NewsML-G2 document holds."""
    return len(root.findall("{*}itemSet/*")) if etree.QName(root).localname == "newsMessage" else 1


def parse(root: Any, *, default_tz: tzinfo) -> ParseResult:
    """Parse a NewsML-G2 document (already loaded by the hardened XML parser) into items."""
    _strip_namespaces(root)
    is_message = root.tag == "newsMessage"
    members = root.findall("itemSet/*") if is_message else [root]
    check_item_count(len(members))
    pictures = {
        guid: picture
        for member in members
        if _is_picture_item(member)
        and (guid := member.get("guid"))
        and (picture := _picture_of(member, picture_item=True))
    }
    links = _picture_links(members, pictures)
    items: ParseResult = []
    for position, member in enumerate(members):
        if is_message and (member.tag != "newsItem" or _is_picture_item(member)):
            continue
        guid = optional_text(member.get("guid"))
        if guid is None:
            items.append(ItemError(position, "item has no guid", field="guid"))
            continue
        try:
            items.append(_item(member, guid, links.get(guid), root, default_tz))
        except ItemRejectedError as error:
            items.append(ItemError(position, error.reason, guid=guid, field=error.field))
        except MarkupTooDeep as error:
            items.append(ItemError(position, str(error), guid=guid))
    return items


def _strip_namespaces(root: Any) -> None:
    # G2 elements, NITF and XHTML never clash by local name, and paths stay readable.
    for element in root.iter():
        tag = element.tag
        if isinstance(tag, str) and tag[0] == "{":
            element.tag = tag.partition("}")[2]
    etree.cleanup_namespaces(root)


def _text(element: Any) -> str | None:
    return None if element is None else optional_text("".join(element.itertext()))


def _code(element: Any) -> str | None:
    """The code of a qcode or uri property (`stat:usable` -> `usable`)."""
    if element is None:
        return None
    identifier = element.get("qcode") or element.get("uri")
    return code_value(identifier).lower() if identifier else None


def _role_first(elements: list[Any], *roles: str) -> list[Any]:
    """Elements with no role or one of the given roles first, the others after."""
    return sorted(
        elements, key=lambda e: e.get("role") is not None and code_value(e.get("role")).lower() not in roles
    )


def _name(element: Any, language: str | None) -> str | None:
    names = element.findall("name")
    prefix = (language or "").partition("-")[0].lower()
    matching = [n for n in names if (n.get(_XML_LANG) or "").lower().startswith(prefix)]
    for name in matching + names:
        if text := _text(name):
            return text
    return optional_text(element.get("literal"))


def _is_picture_item(member: Any) -> bool:
    if _code(member.find("itemMeta/itemClass")) in ("picture", "graphic"):
        return True
    content = member.find("contentSet")
    return (
        content is not None
        and content.find("inlineXML") is None
        and content.find("inlineData") is None
        and any(_is_image(r) for r in content.iterfind("remoteContent"))
    )


def _is_image(remote: Any) -> bool:
    return (remote.get("contenttype") or "").lower().startswith("image/")


def _picture_of(member: Any, *, picture_item: bool) -> Picture | None:
    remotes = [
        r
        for r in member.iterfind("contentSet/remoteContent")
        if safe_url(r.get("href")) and (_is_image(r) or (picture_item and not r.get("contenttype")))
    ]
    if not remotes:
        return None

    def area(remote: Any) -> tuple[int, int]:
        width = positive_int(remote.get("width")) or 0
        height = positive_int(remote.get("height")) or 0
        return width * height, positive_int(remote.get("size")) or 0

    best = max(remotes, key=area)
    descriptions = _role_first(member.findall("contentMeta/description"), "caption")
    if not picture_item:  # a text item's descriptions are about the story, not the image
        descriptions = [d for d in descriptions if d.get("role") and "caption" in d.get("role")]
    caption = next(filter(None, map(_text, descriptions)), None)
    if picture_item:
        caption = caption or _text(member.find("contentMeta/headline"))
    return Picture(
        url=best.get("href").strip(),
        media_type=best.get("contenttype"),
        width=positive_int(best.get("width")),
        height=positive_int(best.get("height")),
        size=positive_int(best.get("size")),
        caption=caption,
        credit=_text(member.find("contentMeta/creditline"))
        or (", ".join(_creators(member, None)) if picture_item else None)
        or None,
    )


def _picture_links(members: list[Any], pictures: dict[str, Picture]) -> dict[str, Picture]:
    """Which text item (by guid) has which picture of the same message."""
    links: dict[str, Picture] = {}
    texts = [m for m in members if m.tag == "newsItem" and m.get("guid") not in pictures]
    for member in texts:
        for link in member.iterfind("itemMeta/link"):
            if link.get("residref") in pictures:
                links.setdefault(member.get("guid"), pictures[link.get("residref")])
    for group in (g for m in members if m.tag == "packageItem" for g in m.iter("group")):
        refs = [ref.get("residref") for ref in group.iterfind("itemRef")]
        in_group = [pictures[ref] for ref in refs if ref in pictures]
        for ref in refs:
            if in_group and ref not in pictures:
                links.setdefault(ref, in_group[0])
    if len(pictures) == 1 and len(texts) == 1:
        links.setdefault(texts[0].get("guid"), next(iter(pictures.values())))
    return links


def _creators(member: Any, language: str | None) -> list[str]:
    names = (_name(c, language) for c in member.iterfind("contentMeta/creator"))
    return list(dict.fromkeys(n for n in names if n))


def _language(member: Any, root: Any) -> str | None:
    language = member.find("contentMeta/language")
    tag = language.get("tag") if language is not None else None
    return optional_text(tag or member.get(_XML_LANG) or root.get(_XML_LANG))


def _body_html(member: Any) -> str:
    for inline in member.iterfind("contentSet/inlineXML"):
        for document in inline:
            if document.tag == "nitf":
                container = document.find("body/body.content")
            elif document.tag == "html":
                container = document.find("body")
            else:  # a bare XHTML fragment
                container = inline
            if container is not None and (body := sanitize_html(xml_inner_html(container))):
                return body
    for data in member.iterfind("contentSet/inlineData"):
        text = data.text or ""
        content_type = (data.get("contenttype") or "").lower()
        if body := sanitize_html(text) if "html" in content_type else text_to_html(text):
            return body
    raise ItemRejectedError("item has no body", "body")


def _subjects(member: Any, language: str | None) -> tuple[str | None, list[str]]:
    section: str | None = None
    tags: dict[str, None] = {}  # in order, without repeats
    subjects = member.findall("contentMeta/subject")
    check_subject_count(len(subjects))
    for subject in subjects:
        name = _name(subject, language)
        qcode = subject.get("qcode") or subject.get("uri")
        scheme = qcode.partition(":")[0] if qcode and "://" not in qcode else qcode
        if section is None and looks_like_section([scheme, subject.get("type")]):
            section = name or (optional_text(code_value(qcode)) if qcode else None)
        elif name:
            tags[name] = None
    return section or next(iter(tags), None), list(tags)


def _genre(member: Any, language: str | None) -> tuple[str | None, list[str]]:
    genres = member.findall("contentMeta/genre")
    for genre in genres:
        if looks_like_opinion([genre.get("qcode"), genre.get("uri"), _name(genre, language)]):
            return "opinion", ["opinion"]
    for genre in genres:
        if name := _name(genre, language) or _code(genre):
            return name.lower(), []
    return None, []


def _pubstatus(member: Any, embargo: Any) -> PubStatus:
    code = _code(member.find("itemMeta/pubStatus"))
    if code is None:
        # An empty <embargoed/> means embargoed until a later version gives the time.
        return "withheld" if embargo is not None and not _text(embargo) else "usable"
    status = _PUBSTATUS.get(code)
    if status is None:
        raise ItemRejectedError(f"unknown pubStatus {code!r}", "pubStatus")
    if status == "usable" and embargo is not None and not _text(embargo):
        return "withheld"
    return status


def _byline(member: Any, language: str | None) -> tuple[str | None, str | None]:
    """The byline and the author's name: G2 creators, else the NITF byline."""
    if creators := _creators(member, language):
        return ", ".join(creators), creators[0]
    byline = member.find("contentSet/inlineXML/nitf/body/body.head/byline")
    if byline is None:
        return None, None
    # <byline>By Jane Doe, <byttl>Staff</byttl></byline>: the name is the leading text.
    name = optional_text((byline.text or "").strip().removeprefix("By ").strip(" ,;"))
    return _text(byline), name


def _item(member: Any, guid: str, linked: Picture | None, root: Any, default_tz: tzinfo) -> ParsedItem:
    headlines = _role_first(member.findall("contentMeta/headline"), "main")
    headline = next(filter(None, map(_text, headlines)), None) or _text(
        member.find("contentSet/inlineXML/nitf/body/body.head/hedline/hl1")
    )
    if headline is None:
        raise ItemRejectedError("item has no headline", "headline")
    body_html = _body_html(member)
    language = _language(member, root)
    section, tags = _subjects(member, language)
    genre, labels = _genre(member, language)
    byline, author_name = _byline(member, language)
    summaries = _role_first(
        [d for d in member.findall("contentMeta/description") if "caption" not in (d.get("role") or "")],
        "summary",
    )
    embargo = member.find("itemMeta/embargoed")

    def time(path: str, field: str) -> datetime | None:
        return optional_time(member.findtext(path), default_tz=default_tz, field=field)

    return ParsedItem(
        guid=guid,
        headline=headline,
        body_html=body_html,
        body_text=html_to_text(body_html),
        lede=next(filter(None, map(_text, summaries)), None),
        version=positive_int(member.get("version")),
        version_created=time("itemMeta/versionCreated", "versionCreated"),
        first_created=time("itemMeta/firstCreated", "firstCreated")
        or time("contentMeta/contentCreated", "contentCreated"),
        byline=byline,
        author_name=author_name,
        section=section,
        tags=tags,
        labels=labels,
        genre=genre,
        language=language,
        embargo_until=time("itemMeta/embargoed", "embargoed"),
        pubstatus=_pubstatus(member, embargo),
        picture=_picture_of(member, picture_item=False) or linked,
    )
