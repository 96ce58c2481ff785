"""Everything that builds, evaluates and promotes routers."""
