"""Federation logic: namespace translation, locating replicas, selecting one, caching what was learnt."""
