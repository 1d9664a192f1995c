from llmreg.cli import main

main()
