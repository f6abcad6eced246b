from mattecli.cli import main

main()
