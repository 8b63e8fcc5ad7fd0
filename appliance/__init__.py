"""The composition root of the `mailstore` command: every part registers its subcommands here."""
