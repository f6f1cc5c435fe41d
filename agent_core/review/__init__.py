"""Outer loop 1: review an incumbent scaffold's episodes and propose a revised scaffold."""
