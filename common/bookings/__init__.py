"""Bookings: requests, their decisions and the line. The booking rule has one home,
``booking_verdict``; RULES.md lists each copy of it and the test that holds it there."""
