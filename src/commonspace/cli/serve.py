"""`commonspace serve`: a search service and web page over one index folder."""

from __future__ import annotations

from commonspace.cli._common import add_command

EXAMPLES = """
  commonspace serve --index idx/                       # http://127.0.0.1:8000/ (API: /docs)
  commonspace serve --index demo_report/index --port 8080
  curl -s localhost:8000/api/search -H 'content-type: application/json' \\
      -d '{"text": "a handwritten seven", "k": 5}'
  commonspace serve --index idx/ --host 0.0.0.0 --workers 2   # reachable from others: warns
"""


def register(subparsers):
    p = add_command(
        subparsers, "serve", help="serve an index: JSON API and a web page to search it",
        description="Load an index folder once (memory-mapped) with its query models and "
        "answer searches over HTTP: a page at / (type a text, drop an image or a .wav, see the "
        "hits of every modality), a JSON API (/api/search answers what `commonspace search "
        "--json` prints), the indexed image and audio files (/api/items/ROW/media) and the "
        "OpenAPI page /docs. Binds 127.0.0.1 unless --host says otherwise. See docs/search.md.",
        examples=EXAMPLES,
    )
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (another than loopback prints a warning)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (each loads the index; pages are shared)")
    p.add_argument("--max-request-mb", type=float, default=16.0,
                   help="largest request body in MiB; larger ones get 413")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for")
    p.add_argument("--media-root", default=None,
                   help="folder that relative source paths of the index are resolved against "
                        "(default: the current folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from commonspace.apps.serve import serve

    serve(args.index, host=args.host, port=args.port, workers=args.workers,
          max_request_mb=args.max_request_mb, max_k=args.max_k, media_root=args.media_root,
          log_level="warning" if args.quiet else "info")
    return 0
