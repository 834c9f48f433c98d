from fedmom_cli.cli import main

main()
