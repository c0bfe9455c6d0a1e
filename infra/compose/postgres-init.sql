-- The other databases of the stack (the first, `airflow`, is POSTGRES_DB): MLflow's tracking store and
-- the user store of its basic-auth app (its own migrations, so its own database).
CREATE DATABASE mlflow OWNER rxrec;
CREATE DATABASE mlflow_auth OWNER rxrec;
