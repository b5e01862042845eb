"""The reference endpoint for HTTP benchmarks: hello world on Starlette, nothing else."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


async def hello(request: Request) -> Response:
    return PlainTextResponse("Hello, world!")


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"length": len(body)})


app = Starlette(routes=[Route("/", hello, methods=["GET"]), Route("/", echo, methods=["POST"])])
