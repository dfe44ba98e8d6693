"""Real sockets and real engine processes, with the service in the test's own process."""
