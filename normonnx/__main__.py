from normonnx.cli import run

run()
