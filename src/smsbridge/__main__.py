from smsbridge.cli import main

raise SystemExit(main())
