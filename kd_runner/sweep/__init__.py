"""Reading what a sweep's runs wrote: tables (aggregate), plots (report), and kd-aggregate / kd-report (cli)."""
