from scalelab.data.clean import CleanStats, clean, content_hash, decode_utf8
from scalelab.data.documents import Doc, RawDoc, Skipped


def test_decode_counts_replacements_but_not_literal_replacement_chars():
    text, replaced = decode_utf8(b"ok \xff\xfe then \xef\xbf\xbd")
    assert replaced == 2
    assert text == "ok \ufffd\ufffd then \ufffd"
    assert decode_utf8("plain ✓".encode()) == ("plain ✓", 0)


def test_clean_normalises():
    stats = CleanStats()
    doc = clean(RawDoc("a", "\ufeffe\u0301\r\nline\rx\x07\x1b\x85\ty\x0c".encode(), "s"), stats)
    assert isinstance(doc, Doc)
    assert doc.text == "\u00e9\nline\nx\ty"
    assert stats.control_chars_removed == 4
    assert stats.nfc_changed == 1


def test_binary_and_empty_are_skipped():
    stats = CleanStats()
    binary = clean(RawDoc("b", b"ELF\x00\x01", "s"), stats)
    empty = clean(RawDoc("e", b" \n\t\r\n", "s"), stats)
    assert isinstance(binary, Skipped) and binary.reason == "binary"
    assert isinstance(empty, Skipped) and empty.reason == "empty"


def test_text_records_with_nul_are_cleaned_not_skipped():
    doc = clean(RawDoc("j", "a\x00b", "s"), CleanStats())
    assert isinstance(doc, Doc) and doc.text == "ab"


def test_content_hash_ignores_whitespace_layout_only():
    assert content_hash("a  b\n c") == content_hash("a b c ")
    assert content_hash("a b c") != content_hash("a b d")
