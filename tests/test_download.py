import hashlib
import io
import tarfile

import pytest

from segpipe.data.download import Archive, extract, fetch
from segpipe.errors import SegpipeError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, so a cut response is really partial


def archive_for(data: bytes, name: str = "data.bin") -> Archive:
    return Archive(name, f"https://example.invalid/{name}", "md5:" + hashlib.md5(data).hexdigest())


def test_fetch_downloads_verifies_and_does_not_download_twice(archive_server, tmp_path):
    archive_server.files["data.bin"] = PAYLOAD
    path = fetch(archive_for(PAYLOAD), tmp_path, mirror=archive_server.url)
    assert path == tmp_path / "data.bin" and path.read_bytes() == PAYLOAD
    fetch(archive_for(PAYLOAD), tmp_path, mirror=archive_server.url)
    assert len(archive_server.requests) == 1
    assert not (tmp_path / "data.bin.part").exists()


def test_a_corrupted_download_is_rejected_with_both_hashes(archive_server, tmp_path):
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    archive_server.files["data.bin"] = bytes(corrupted)
    expected = archive_for(PAYLOAD)
    with pytest.raises(SegpipeError) as error:
        fetch(expected, tmp_path, mirror=archive_server.url)
    text = str(error.value)
    assert "data.bin: checksum mismatch" in text
    assert f"expected {expected.checksum}" in text
    assert f"got md5:{hashlib.md5(bytes(corrupted)).hexdigest()}" in text
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_download_resumes_with_a_range_request(archive_server, tmp_path):
    archive_server.files["data.bin"] = PAYLOAD
    archive_server.faults["data.bin"] = [("cut", 300_000)]
    path = fetch(archive_for(PAYLOAD), tmp_path, mirror=archive_server.url, backoff=0.01)
    assert path.read_bytes() == PAYLOAD
    assert archive_server.requests == [("data.bin", None), ("data.bin", "bytes=300000-")]


def test_a_server_without_ranges_restarts_the_download(archive_server, tmp_path):
    archive_server.ranges = False
    archive_server.files["data.bin"] = PAYLOAD
    archive_server.faults["data.bin"] = [("cut", 300_000)]
    assert fetch(archive_for(PAYLOAD), tmp_path, mirror=archive_server.url, backoff=0.01).read_bytes() == PAYLOAD


def test_transient_errors_are_retried_and_then_reported(archive_server, tmp_path):
    archive_server.files["data.bin"] = PAYLOAD
    archive_server.faults["data.bin"] = ["503", "503"]
    assert fetch(archive_for(PAYLOAD), tmp_path, mirror=archive_server.url, backoff=0.01).read_bytes() == PAYLOAD
    assert len(archive_server.requests) == 3

    archive_server.faults["other.bin"] = ["503"] * 5
    archive_server.files["other.bin"] = PAYLOAD
    with pytest.raises(SegpipeError, match=r"downloading .*/other.bin failed after 3 attempts: HTTP 503"):
        fetch(archive_for(PAYLOAD, "other.bin"), tmp_path, mirror=archive_server.url, retries=2, backoff=0.01)


def test_a_missing_file_names_the_url_and_the_mirror_key(archive_server, tmp_path):
    with pytest.raises(SegpipeError, match=r"cannot download http://127.0.0.1:\d+/data.bin: HTTP 404 .*data.mirror"):
        fetch(archive_for(PAYLOAD), tmp_path, mirror=archive_server.url)


def test_a_local_folder_works_as_a_mirror(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "data.bin").write_bytes(PAYLOAD)
    assert fetch(archive_for(PAYLOAD), tmp_path / "cache", mirror=str(tmp_path / "mirror")).read_bytes() == PAYLOAD


def make_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def file_member(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("bad, reason", [
    (file_member("../evil.txt"), "path contains '..'"),
    (file_member("a/../../evil.txt"), "path contains '..'"),
    (file_member("/etc/evil.txt"), "absolute path"),
    (link_member("a/link", "../../outside"), "points outside the target folder"),
    (link_member("a/abs", "/etc/passwd"), "points outside the target folder"),
    (link_member("a/hard", "../outside", tarfile.LNKTYPE), "points outside the target folder"),
])
def test_extraction_refuses_members_that_escape_and_extracts_nothing(tmp_path, bad, reason):
    archive = tmp_path / "bad.tar"
    make_tar(archive, [file_member("a/good.txt"), bad])
    with pytest.raises(SegpipeError, match=f"refusing to extract member .*{reason}"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "a" / "good.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extraction_keeps_safe_links_and_filters_members(tmp_path):
    archive = tmp_path / "ok.tar"
    make_tar(archive, [file_member("a/good.txt", b"hi"), link_member("a/link.txt", "good.txt"), file_member("b/skip.txt")])
    names = extract(archive, tmp_path / "out", keep=lambda name: name.startswith("a/"))
    assert sorted(names) == ["a/good.txt", "a/link.txt"]
    assert (tmp_path / "out/a/link.txt").read_bytes() == b"hi"
    assert not (tmp_path / "out/b").exists()
