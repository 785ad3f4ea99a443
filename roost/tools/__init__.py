"""Example server-side tools. Add your own: any importable `module:function` works."""
