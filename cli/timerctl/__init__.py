"""timerctl: the command line of timer_redis."""
