"""The Flickr8k download against a local HTTP server on 127.0.0.1 serving small look-alike archives."""
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from captioning import cli
from captioning.data.download import DownloadError, download_flickr8k, extract_archive, fetch
from captioning.data.flickr8k import load_flickr8k
from data_fixtures import make_original, tiny_corpus


def zip_bytes(members):
    """A zip archive in memory from {name: bytes}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """The two archives laid out like the real ones, __MACOSX junk included."""
    source = tmp_path_factory.mktemp("source")
    make_original(source, *tiny_corpus())
    images = {f"Flicker8k_Dataset/{p.name}": p.read_bytes()
              for p in sorted((source / "Flicker8k_Dataset").iterdir())}
    images["__MACOSX/Flicker8k_Dataset/._1000_abc0.jpg"] = b"resource fork"
    text = {p.name: p.read_bytes() for p in sorted((source / "Flickr8k_text").iterdir())}
    text["__MACOSX/._Flickr8k.token.txt"] = b"junk"
    return {"Flickr8k_Dataset.zip": zip_bytes(images), "Flickr8k_text.zip": zip_bytes(text)}


class FileServer:
    """Serves {path: bytes}; honours Range unless told not to; can cut a reply short once."""

    def __init__(self, files):
        self.files, self.requests = dict(files), []
        self.cut_after = {}          # name -> bytes to send before dropping the connection (once)
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                requested = self.headers.get("Range")
                if requested and server.honour_range:
                    start = int(requested.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = server.cut_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/Flickr8k"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(archives):
    srv = FileServer(archives)
    yield srv
    srv.close()


def test_download_unpacks_the_original_layout_without_junk(server, tmp_path):
    log = io.StringIO()
    results = download_flickr8k(tmp_path / "data", url_base=server.url, progress_stream=log)
    data = load_flickr8k(tmp_path / "data")
    assert data.layout == "original" and data.report.images == {"train": 6, "dev": 2, "test": 2}
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == ["Flicker8k_Dataset", "Flickr8k_text"]  # archives deleted, no __MACOSX
    assert not list((tmp_path / "data").rglob("._*"))
    assert [len(digest) for _, digest, _ in results] == [64, 64]
    assert "100.0%" in log.getvalue() and "MB/s" in log.getvalue()
    # Run again: everything is there, nothing is fetched or touched.
    server.requests.clear()
    download_flickr8k(tmp_path / "data", url_base=server.url, progress_stream=io.StringIO())
    assert server.requests == []


def test_an_interrupted_download_resumes_with_a_range_request(server, archives, tmp_path):
    name = "Flickr8k_Dataset.zip"
    server.cut_after[name] = 1000
    with pytest.raises(DownloadError, match="stopped at 1000 of .* run the same command again"):
        fetch(f"{server.url}/{name}", tmp_path / name, io.StringIO())
    assert (tmp_path / f"{name}.part").stat().st_size == 1000
    fetch(f"{server.url}/{name}", tmp_path / name, io.StringIO())
    assert server.requests[-1] == (name, "bytes=1000-")
    assert (tmp_path / name).read_bytes() == archives[name]
    assert not (tmp_path / f"{name}.part").exists()


def test_a_server_ignoring_range_restarts_the_file(server, archives, tmp_path):
    name = "Flickr8k_text.zip"
    (tmp_path / f"{name}.part").write_bytes(b"stale bytes from elsewhere")
    server.honour_range = False
    fetch(f"{server.url}/{name}", tmp_path / name, io.StringIO())
    assert (tmp_path / name).read_bytes() == archives[name]


def test_a_complete_part_file_is_accepted_on_416(server, archives, tmp_path):
    name = "Flickr8k_text.zip"
    (tmp_path / f"{name}.part").write_bytes(archives[name])
    fetch(f"{server.url}/{name}", tmp_path / name, io.StringIO())
    assert (tmp_path / name).read_bytes() == archives[name]


def test_a_corrupt_archive_is_set_aside_and_not_unpacked(server, archives, tmp_path):
    data = bytearray(archives["Flickr8k_text.zip"])
    data[60] ^= 0xFF  # inside the first member's compressed data: its CRC fails
    server.files["Flickr8k_text.zip"] = bytes(data)
    with pytest.raises(DownloadError, match="Flickr8k_text.zip is corrupt: (member|damaged)"):
        download_flickr8k(tmp_path, url_base=server.url, progress_stream=io.StringIO())
    assert (tmp_path / "Flickr8k_text.zip.corrupt").exists()
    assert not (tmp_path / "Flickr8k_text").exists()
    assert not list(tmp_path.glob(".Flickr8k_text.partial-*"))
    server.files["Flickr8k_text.zip"] = b"this is not a zip at all"
    with pytest.raises(DownloadError, match="not a readable zip"):
        download_flickr8k(tmp_path, url_base=server.url, progress_stream=io.StringIO())


def test_missing_file_on_the_server_names_the_http_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{server.url}/nothing.zip", tmp_path / "nothing.zip", io.StringIO())


def test_no_network_gives_a_clear_message_from_the_command(tmp_path, capsys):
    status = cli.main(["download", "--dest", str(tmp_path / "d"), "--url-base", "http://127.0.0.1:9",
                       "--timeout", "5"])
    assert status == 1
    err = capsys.readouterr().err
    assert "error: cannot reach http://127.0.0.1:9/Flickr8k_Dataset.zip" in err
    assert "network" in err
    assert not (tmp_path / "d").exists()          # nothing fetched: no empty folder left behind


def test_the_command_reports_the_counts(server, tmp_path, capsys):
    assert cli.main(["download", "--dest", str(tmp_path / "d"), "--url-base", server.url]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images, 30 captions" in out and "FLICKR8K_DIR" in out


def test_archive_members_outside_the_destination_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    evil.write_bytes(zip_bytes({"../escape.txt": b"x"}))
    with pytest.raises(DownloadError, match="outside the destination"):
        extract_archive(evil, tmp_path, "Flickr8k_text")
    assert not (tmp_path.parent / "escape.txt").exists()
    assert not (tmp_path / "Flickr8k_text").exists()


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_redraws_in_place_on_a_terminal():
    from captioning.progress import ProgressBar
    screen = FakeTerminal()
    bar = ProgressBar("x.zip", total=4_000_000, unit="B", stream=screen)
    bar.last_draw -= 1  # as if the last redraw was a second ago
    bar.update(1_000_000)
    bar.finish()
    text = screen.getvalue()
    assert text.startswith("\rx.zip [") and " 25.0% 1.0 MB/4.0 MB ETA " in text
    assert text.endswith("MB/s\n") and text.count("\n") == 1
    assert ProgressBar("y", total=None, unit="B", stream=io.StringIO()).line().startswith("y 0.0 MB ")
