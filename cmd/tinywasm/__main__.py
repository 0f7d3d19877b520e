from cmd.tinywasm.cli import main

raise SystemExit(main())
