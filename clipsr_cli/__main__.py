from clipsr_cli.cli import main

main()
