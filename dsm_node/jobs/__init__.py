"""Jobs: the state machine in the database, the task that runs one job, and the executors."""
