"""``dsm-node view``: open a study and the node's results (SEG, SR) in OHIF, locally.

    dsm-node view STUDY_DIR_OR_FILES... [--port 8099] [--open] [--no-isolate] [--smoke]

Starts a private Orthanc (DICOMweb plugin, temporary storage), uploads the DICOM files found
under the arguments, and serves the offline OHIF viewer (scripts/install-viewer.sh) on
http://127.0.0.1:PORT/ with DICOMweb proxied on the same origin. Prints the viewer link for
every study (opening its SEG, if it has one) and runs until Ctrl-C.

Loopback only: the viewer's HTTP server binds 127.0.0.1. Orthanc 1.10 cannot bind to one
interface, so by default the process first moves into a private network namespace (root, or an
unprivileged user namespace where the kernel allows it) after opening its own listening socket:
Orthanc then has no network but loopback and only the viewer server can reach it. Where that is
impossible (or with --no-isolate) Orthanc's HTTP port is reachable on every interface, with
remote access refused by Orthanc (RemoteAccessAllowed false, 403) and its DICOM port disabled;
a warning says so.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import time


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="STUDY_DIR_OR_FILES",
                        help="DICOM files or folders (searched recursively): the CT and the "
                             "node's SEG/SR")
    parser.add_argument("--port", type=int, default=8099,
                        help="viewer port on 127.0.0.1 (default 8099; 0 = any free port)")
    parser.add_argument("--open", action="store_true",
                        help="open the viewer in the default web browser")
    parser.add_argument("--no-isolate", action="store_true",
                        help="do not put Orthanc in a private network namespace")
    parser.add_argument("--smoke", action="store_true",
                        help="start, check that the viewer and DICOMweb answer, stop (exit 0/1)")


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..viewer.dicomfiles import scan, series_of, studies
    from ..viewer.hosthelper import HostHelper
    from ..viewer.netns import enter_private_netns
    from ..viewer.ohif import ViewerNotInstalled, ohif_dist, viewer_path
    from ..viewer.orthanc import OrthancError, find_dicomweb_plugin, find_orthanc
    from ..viewer.stack import ViewerStack

    def fail(msg: str) -> int:
        print(f"dsm-node view: {msg}", file=sys.stderr)
        return 2

    try:
        ohif_dist()
    except ViewerNotInstalled as e:
        return fail(str(e))
    if find_orthanc() is None or find_dicomweb_plugin() is None:
        return fail("Orthanc with the DICOMweb plugin is needed "
                    "(Debian: apt-get install orthanc orthanc-dicomweb)")
    try:
        files = scan(args.paths)
    except FileNotFoundError as e:
        return fail(f"{e} does not exist")
    if not files:
        return fail("no DICOM file found")
    by_study = studies(files)

    # The viewer's socket, on the host's loopback, before anything else.
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        lsock.bind(("127.0.0.1", args.port))
    except OSError as e:
        return fail(f"cannot listen on 127.0.0.1:{args.port}: {e}")
    lsock.listen(64)
    port = lsock.getsockname()[1]

    helper = HostHelper() if (args.open or args.smoke) else None
    isolated, how = (False, "--no-isolate") if args.no_isolate else enter_private_netns()
    if isolated:
        _say(f"Orthanc runs in a private {how}: reachable only through the viewer on "
             f"127.0.0.1:{port}")
    else:
        _say(f"WARNING: Orthanc not isolated ({how}). Orthanc 1.10 listens on all interfaces; "
             "it refuses non-local HTTP clients (RemoteAccessAllowed=false) and its DICOM port "
             "is disabled.")

    stack = ViewerStack(listen_socket=lsock)
    try:
        stack.start()
        n = stack.upload([f.path for f in files])
    except OrthancError as e:
        stack.stop()
        return fail(str(e))
    base = f"http://127.0.0.1:{port}"
    _say(f"{n} instance(s) from {len(by_study)} study(ies) loaded into Orthanc.")
    first_url = base + "/"
    for i, (study, sfiles) in enumerate(by_study.items()):
        segs = series_of(sfiles, "SEG")
        srs = series_of(sfiles, "SR")
        mods = sorted({f.modality for f in sfiles})
        url = base + viewer_path(study, segs[0] if segs else None)
        if i == 0:
            first_url = url
        _say(f"study {study} ({', '.join(mods)}; {len(segs)} SEG, {len(srs)} SR)\n  {url}")
    _say(f"study list: {base}/")

    if args.smoke:
        assert helper is not None  # made above for --smoke
        ok = helper.ask(smoke=[base, next(iter(by_study))]) == "ok"
        helper.close()
        stack.stop()
        _say("smoke check " + ("passed" if ok else "FAILED"))
        return 0 if ok else 1

    if helper is not None:
        helper.ask(open=first_url)
        helper.close()
    _say("Ctrl-C to stop.")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0

