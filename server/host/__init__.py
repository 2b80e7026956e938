"""Host tuning of a serving process: CPU pinning, worker processes, huge pages and prefaulting. Nothing here
changes an answer; it changes where and how fast the same answer is computed."""
