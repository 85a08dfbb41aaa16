from nodegraph.cli import main

raise SystemExit(main())
