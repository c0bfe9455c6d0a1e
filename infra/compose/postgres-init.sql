-- The second database of the stack (the first, `airflow`, is POSTGRES_DB): MLflow's tracking store.
CREATE DATABASE mlflow OWNER rxrec;
