from labctl.cli.main import main

main(prog_name="labctl")
