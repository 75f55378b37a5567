from scmgen.cli import main

main()
