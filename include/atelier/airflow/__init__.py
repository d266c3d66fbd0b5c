"""Airflow adapters, in one place (like a provider's hooks / operators / triggers): the resources
a task opens from Airflow connections, the task callables the DAG files wire, the render operator
and its trigger. Nothing outside this package imports Airflow."""
