"""Records → the static leaderboard: fair ranking on the privacy–utility frontier, and the HTML site."""
