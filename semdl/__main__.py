from semdl.cli import main

main()
