from normonnx.cli import run

if __name__ == "__main__":  # a spawned worker of a many-file run imports this module too
    run()
